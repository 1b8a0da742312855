//! A cgroup v2 folder owned by a test run (test-network rule 4): created under the cgroup
//! v2 root as `slbt-<pid hex>-<n>`, socket programs attach to it, never to the root.
//!
//! [`TestCgroup::enter`] moves this whole test process into the folder (a cgroup v2
//! process moves with all its threads; the test's clients are threads of this process,
//! inside the test's namespaces); dropping the guard moves the process back to the cgroup
//! it came from and removes the folder. [`sweep_cgroups`] removes folders of dead runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::netns::{run_prefix, FAMILY_PREFIX};

/// Where the cgroup v2 hierarchy is looked for: the hybrid layout of the project's
/// machines, then a pure cgroup v2 machine. `SLB_TEST_CGROUP2_ROOT` overrides both.
pub const CGROUP2_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// `statfs.f_type` of cgroup2.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// The cgroup v2 mount point.
pub fn cgroup2_root() -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var("SLB_TEST_CGROUP2_ROOT") {
        Ok(root) => vec![PathBuf::from(root)],
        Err(_) => CGROUP2_ROOTS.iter().map(PathBuf::from).collect(),
    };
    for root in &candidates {
        let Ok(stat) = nix::sys::statfs::statfs(root) else {
            continue;
        };
        #[allow(clippy::unnecessary_cast)]
        let kind = stat.filesystem_type().0 as i64;
        if kind == CGROUP2_SUPER_MAGIC {
            return Ok(root.clone());
        }
    }
    bail!("no cgroup2 mount at {candidates:?} (set SLB_TEST_CGROUP2_ROOT)")
}

/// A cgroup folder of this run; the process is moved back and the folder removed on drop.
#[derive(Debug)]
pub struct TestCgroup {
    path: PathBuf,
    /// The cgroup this process was in before `enter` (its `cgroup.procs`), when entered.
    came_from: Option<PathBuf>,
}

impl TestCgroup {
    /// Creates `<cgroup2 root>/slbt-<pid hex>-<n>`.
    pub fn create() -> Result<Self> {
        let path = cgroup2_root()?.join(run_prefix());
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            path,
            came_from: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves this process (all its threads) into the folder.
    pub fn enter(&mut self) -> Result<()> {
        let own =
            std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let relative = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let came_from = cgroup2_root()?.join(relative.trim_start_matches('/'));
        write_pid(&self.path)?;
        self.came_from = Some(came_from);
        Ok(())
    }

    /// Moves this process back where it was.
    pub fn leave(&mut self) -> Result<()> {
        if let Some(back) = self.came_from.take() {
            write_pid(&back)?;
        }
        Ok(())
    }
}

fn write_pid(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("writing our pid to {}", procs.display()))
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            eprintln!("warning: leaving {}: {e:#}", self.path.display());
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Removes cgroup folders of our family whose owning process is gone (a folder with a
/// process still in it cannot be removed and is left alone). Returns what was removed.
pub fn sweep_cgroups() -> Vec<String> {
    let Ok(root) = cgroup2_root() else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for name in crate::netns::names_in(&root) {
        let Some(pid) = name
            .strip_prefix(FAMILY_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = root.join(&name);
        if std::fs::remove_dir(&path).is_ok() {
            removed.push(path.display().to_string());
        }
    }
    removed
}
