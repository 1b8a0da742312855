//! Synchronous detach of a pinned link (`BPF_LINK_DETACH`), which aya 0.14 does not wrap.
//!
//! Removing a link pin only drops a reference: the kernel frees the link (and detaches the
//! program) later, from a deferred work item, and not at all while another process still
//! holds an fd to it. `cleanup` detaches explicitly so that "cleaned" means "detached".

use std::{
    ffi::CString,
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// The `bpf_attr` members of BPF_OBJ_GET.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    /// Explicit, zeroed: the kernel rejects non-zero bytes after the last member.
    _pad: u32,
}

/// The `bpf_attr` members of BPF_LINK_UPDATE.
#[repr(C)]
#[derive(Default)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The `bpf_attr` member of BPF_LINK_DETACH.
#[repr(C)]
#[derive(Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialised #[repr(C)] prefix of `union bpf_attr` for
    // `cmd`, and its exact size is passed; the kernel zero-extends the rest.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>()) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the bpf object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjGetAttr {
        pathname: c_path.as_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link pinned at `path` now. A link whose device is already gone reports
/// ENOLINK/ENOENT, which counts as detached.
pub fn detach_pinned(path: &Path) -> io::Result<()> {
    let fd = obj_get(path)?;
    let link_fd =
        u32::try_from(fd.as_raw_fd()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut attr = LinkDetachAttr { link_fd };
    match bpf(BPF_LINK_DETACH, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOLINK | libc::ENOENT)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces the program of the link pinned at `path` with `prog` (`BPF_LINK_UPDATE`,
/// atomic: no moment without a program), which aya 0.14 wraps for tc links only.
pub fn update_pinned(path: &Path, prog: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let fd = obj_get(path)?;
    let to_u32 =
        |fd: i32| u32::try_from(fd).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
    let mut attr = LinkUpdateAttr {
        link_fd: to_u32(fd.as_raw_fd())?,
        new_prog_fd: to_u32(prog.as_raw_fd())?,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(drop)
}
