//! Network namespaces owned by a test run (see `shared/notes/test-network.md`).
//!
//! - [`NetNs`]: a named namespace (`ip netns add`), deleted on drop.
//! - [`run_in`]: run a closure on a fresh thread that has `setns()`-ed into a namespace;
//!   the calling thread never changes namespace. Sockets created inside keep belonging to
//!   that namespace, so a listener or a held connection can be returned and used anywhere.
//! - [`run_prefix`]: a unique name prefix per run (`slbt-<pid hex>-<counter>`).
//! - [`sweep_leftovers`]: removes namespaces and bpffs folders of dead runs.
//!
//! Nothing here touches the root namespace: every `ip` command that configures links runs
//! with `-n <namespace>`, and veth pairs are created with both ends inside namespaces.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

/// Every name a test run creates (namespaces, bpffs folders) starts with this.
pub const FAMILY_PREFIX: &str = "slbt-";
/// Where `ip netns add` puts the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// Where the per-node bpffs folders live.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh prefix, unique in this process and across live processes:
/// `slbt-<pid hex>-<counter>` (at most 16 characters).
pub fn run_prefix() -> String {
    let n = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{FAMILY_PREFIX}{:x}-{n}", std::process::id())
}

/// A network namespace created by this run, deleted (with every link inside it) on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// `ip netns add <name>` and bring `lo` up. The name must carry the run prefix.
    pub fn create(name: &str) -> Result<Self> {
        if !name.starts_with(FAMILY_PREFIX) {
            bail!("namespace name {name:?} does not start with {FAMILY_PREFIX:?}");
        }
        run_ip(&["netns", "add", name]).with_context(|| format!("creating netns {name}"))?;
        let ns = Self {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the handle `setns()` and `nsenter --net=` take.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// `ip -n <name> <args>`: configure links, addresses and routes of this namespace only.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full).with_context(|| format!("in netns {}", self.name))
    }

    /// Like [`NetNs::ip`], returning stdout (for `show` commands).
    pub fn ip_output(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip_output(&full).with_context(|| format!("in netns {}", self.name))
    }

    /// Sets a sysctl of THIS namespace (`key` as in `net/ipv4/ip_forward`), from a thread
    /// that entered it: `/proc/sys/net` resolves to the opener's network namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        if !key.starts_with("net/") {
            bail!("sysctl {key:?} is not per network namespace");
        }
        let path = Path::new("/proc/sys").join(key);
        run_in(self, move || {
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))
        })
        .with_context(|| format!("sysctl {key}={value} in netns {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: deleting netns {}: {e:#}", self.name);
        }
    }
}

/// Runs `f` on a new thread inside `ns` and returns its result. A panic in `f` is
/// re-raised on the calling thread.
pub fn run_in<T, F>(ns: &NetNs, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    let handle =
        File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
    let thread_name = format!("in-{}", ns.name());
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name(thread_name)
            .spawn_scoped(scope, move || -> Result<T> {
                setns(&handle, CloneFlags::CLONE_NEWNET).context("setns(CLONE_NEWNET)")?;
                f()
            })
            .context("spawning a namespace thread")?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Deletes namespaces and bpffs folders of the `slbt-` family whose owning process
/// (the pid in the name) is gone. Live runs, including this one, are left alone, so
/// tests may run in parallel. Returns what was removed.
pub fn sweep_leftovers() -> Vec<String> {
    let mut removed = Vec::new();
    for name in names_in(Path::new(NETNS_DIR)) {
        if is_stale(&name) && run_ip(&["netns", "delete", &name]).is_ok() {
            removed.push(format!("netns {name}"));
        }
    }
    for name in names_in(Path::new(BPFFS_ROOT)) {
        let path = Path::new(BPFFS_ROOT).join(&name);
        if is_stale(&name) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path.display().to_string());
        }
    }
    removed
}

/// Names of the `slbt-` family currently present in `dir` (namespaces or bpffs folders).
pub fn names_in(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(FAMILY_PREFIX))
        .collect()
}

/// A name of our family whose pid is not a live process.
fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(FAMILY_PREFIX) else {
        return false;
    };
    let pid_hex = rest.split('-').next().unwrap_or_default();
    match u32::from_str_radix(pid_hex, 16) {
        Ok(pid) => !Path::new("/proc").join(pid.to_string()).exists(),
        Err(_) => true,
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    ip_output(args).map(|_| ())
}

fn ip_output(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_unique_and_short() {
        let a = run_prefix();
        let b = run_prefix();
        assert_ne!(a, b);
        assert!(a.starts_with(FAMILY_PREFIX));
        assert!(a.len() <= 16, "{a}");
    }

    #[test]
    fn own_names_are_not_stale() {
        assert!(!is_stale(&run_prefix()));
        assert!(is_stale("slbt-zz-0"), "unparsable pid counts as stale");
        assert!(
            !is_stale("other-1-0"),
            "names outside the family are never touched"
        );
    }
}
