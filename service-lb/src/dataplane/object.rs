//! The eBPF object built by `build.rs`, embedded in the binary.

/// The compiled eBPF object (ELF), or an empty slice when the build wrote a stub.
pub fn bytes() -> &'static [u8] {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/service-lb"));
    OBJECT
}

/// Error text for the stub: what to run to get the real object.
pub const STUB_HINT: &str = "this service-lb binary was built without its eBPF object \
(bpf-linker was missing or AYA_BUILD_SKIP was set); run `cargo xtask setup` and rebuild";

/// Whether the embedded object is the empty stub.
pub fn is_stub() -> bool {
    bytes().is_empty()
}
