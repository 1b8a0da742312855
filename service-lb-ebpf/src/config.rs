//! Load-time configuration: the `SLB_CONFIG` global, patched by userspace with
//! `EbpfLoader::override_global(CONFIG_GLOBAL, ..)`.

use service_lb_common::DataplaneConfig;

/// Read-only to the programs (it lands in `.rodata`, so the verifier sees constants).
#[no_mangle]
static SLB_CONFIG: DataplaneConfig = DataplaneConfig::DEFAULT;

/// The configuration in force. A volatile read, so the compiler cannot fold the default
/// values in before userspace patches them.
#[inline(always)]
pub fn get() -> DataplaneConfig {
    // SAFETY: a plain `#[repr(C)]` static of integers, always initialised.
    unsafe { core::ptr::read_volatile(&SLB_CONFIG) }
}
