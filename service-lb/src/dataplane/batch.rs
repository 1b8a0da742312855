//! `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` on hash maps.
//! aya 0.14 wraps none of them: this is a small raw `bpf(2)` wrapper (`libc::syscall`) on
//! the fd of a map aya opened. One syscall moves many entries, where aya's `iter()` costs
//! two syscalls per entry and `insert` one.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{IterableMap, MapData};

/// Entries asked for per lookup call (a hash bucket larger than this makes the kernel
/// answer ENOSPC: the buffer then grows).
const LOOKUP_CHUNK: usize = 4_096;
/// Entries per update/delete call (the kernel takes them one by one; this only bounds
/// the time one syscall holds the CPU).
const WRITE_CHUNK: usize = 8_192;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr.batch` whose pointers point into buffers that
    // outlive the call and hold `count` keys/values of the map's sizes (checked by the
    // callers against the map's key and value sizes).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn raw_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}

/// Whether the map's key and value sizes are those of `K` and `V` (what makes the raw
/// buffers below the right size).
fn sizes_match<K, V>(map: &MapData) -> bool {
    map.info().is_ok_and(|info| {
        info.key_size() as usize == size_of::<K>() && info.value_size() as usize == size_of::<V>()
    })
}

/// Every entry of a hash map, read with `BPF_MAP_LOOKUP_BATCH` (a few syscalls for the
/// whole map). `Err(Unsupported)` when the sizes do not match or the kernel has no batch
/// operations for the map (the caller then walks it entry by entry).
pub(crate) fn lookup_all<K: aya::Pod, V: aya::Pod>(
    map: &impl IterableMap<K, V>,
) -> io::Result<Vec<(K, V)>> {
    let data = map.map();
    if !sizes_match::<K, V>(data) {
        return Err(io::ErrorKind::Unsupported.into());
    }
    let mut out = Vec::new();
    let mut chunk = LOOKUP_CHUNK;
    let mut cursor: Option<u64> = None;
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
        let mut next: u64 = 0;
        let in_batch = cursor;
        let mut attr = BatchAttr {
            in_batch: in_batch
                .as_ref()
                .map_or(0, |c| std::ptr::from_ref(c) as u64),
            out_batch: std::ptr::from_mut(&mut next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: raw_fd(data),
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        let done = match &result {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < (1 << 20) => {
                chunk *= 2;
                continue;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => {
                return Err(io::ErrorKind::Unsupported.into())
            }
            Err(_) => return result.map(|()| Vec::new()),
        };
        let n = (attr.count as usize).min(chunk);
        // SAFETY: the kernel wrote `n` keys and values (plain-old-data types of the
        // map's sizes, checked above).
        unsafe {
            keys.set_len(n);
            values.set_len(n);
        }
        out.extend(
            keys.into_iter()
                .zip(values)
                // SAFETY: initialised by the kernel (see above).
                .map(|(k, v)| unsafe { (k.assume_init(), v.assume_init()) }),
        );
        if done {
            return Ok(out);
        }
        cursor = Some(next);
    }
}

/// Writes `entries` in order with `BPF_MAP_UPDATE_BATCH`. On error: how many were
/// written before the failing one, and the error.
pub(crate) fn update<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    entries: &[(K, V)],
) -> Result<(), (usize, io::Error)> {
    if !sizes_match::<K, V>(map) {
        return Err((0, io::ErrorKind::Unsupported.into()));
    }
    let mut done = 0;
    for chunk in entries.chunks(WRITE_CHUNK) {
        let keys: Vec<K> = chunk.iter().map(|(k, _)| *k).collect();
        let values: Vec<V> = chunk.iter().map(|(_, v)| *v).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: raw_fd(map),
            ..BatchAttr::default()
        };
        if let Err(e) = bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
            return Err((done + (attr.count as usize).min(chunk.len()), e));
        }
        done += chunk.len();
    }
    Ok(())
}

/// Deletes `keys` in order with `BPF_MAP_DELETE_BATCH`; a key the map does not hold is
/// skipped (deleting a missing entry succeeds, as everywhere in the stores).
pub(crate) fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> Result<(), (usize, io::Error)> {
    let key_size_ok = map
        .info()
        .is_ok_and(|info| info.key_size() as usize == size_of::<K>());
    if !key_size_ok {
        return Err((0, io::ErrorKind::Unsupported.into()));
    }
    let mut start = 0;
    while start < keys.len() {
        let chunk = &keys[start..keys.len().min(start + WRITE_CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: raw_fd(map),
            ..BatchAttr::default()
        };
        match bpf(BPF_MAP_DELETE_BATCH, &mut attr) {
            Ok(()) => start += chunk.len(),
            // The key at `count` is missing: skip it and go on.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                start += (attr.count as usize).min(chunk.len()) + 1;
            }
            Err(e) => return Err((start + (attr.count as usize).min(chunk.len()), e)),
        }
    }
    Ok(())
}
