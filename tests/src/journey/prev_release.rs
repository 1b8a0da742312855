//! The daemon binary of an earlier commit, for upgrade/downgrade tests. There are no
//! release tags: the "previous release" is a commit ([`DEFAULT_PREVIOUS`], or
//! `SLB_PREV_RELEASE=<rev>`). Built once per commit and cached:
//!
//! - `target/prev-release/<commit>/src`: `git archive <commit>` (outside the repository's
//!   tree of sources, inside the ignored `target/`);
//! - `target/prev-release/target`: its cargo target folder (shared by every cached commit,
//!   so dependencies build once);
//! - `target/prev-release/<commit>/service-lb`: the binary, copied out of that folder.
//!
//! The first build takes minutes (printed); later runs reuse the binary at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The landed main before the operations round (issue 13).
pub const DEFAULT_PREVIOUS: &str = "a66607d";

/// The repository's root (this crate lives in `<root>/tests`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The full commit id of `rev` in this repository.
pub fn resolve(rev: &str) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo_root())
        .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!(
            "{rev} is not a commit of this repository: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit the tests treat as the previous release.
pub fn previous_commit() -> Result<String> {
    let rev = std::env::var("SLB_PREV_RELEASE").unwrap_or_else(|_| DEFAULT_PREVIOUS.to_owned());
    resolve(&rev)
}

/// The `service-lb` binary of `commit`, built (once) if not cached.
pub fn binary(commit: &str) -> Result<PathBuf> {
    let dir = target_dir().join("prev-release").join(commit);
    let binary = dir.join("service-lb");
    if binary.exists() {
        eprintln!("previous release {commit}: cached {}", binary.display());
        return Ok(binary);
    }
    let started = Instant::now();
    let src = dir.join("src");
    if !src.join("Cargo.toml").exists() {
        std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
        let script = format!(
            "git -C '{}' archive '{commit}' | tar -x -C '{}'",
            repo_root().display(),
            src.display()
        );
        let status = Command::new("sh")
            .args(["-c", &script])
            .status()
            .context("git archive")?;
        if !status.success() {
            bail!("`{script}` failed ({status})");
        }
    }
    let build_dir = target_dir().join("prev-release").join("target");
    eprintln!(
        "previous release {commit}: building service-lb in {} (once; cached afterwards)",
        src.display()
    );
    let status = Command::new("nice")
        .args(["cargo", "build", "-p", "service-lb", "--bin", "service-lb"])
        .arg("--target-dir")
        .arg(&build_dir)
        .current_dir(&src)
        .env("CARGO_INCREMENTAL", "0")
        .env("SERVICE_LB_REQUIRE_EBPF", "1")
        .status()
        .context("cargo build of the previous release")?;
    if !status.success() {
        bail!("building {commit} failed ({status})");
    }
    let built = build_dir.join("debug").join("service-lb");
    let tmp = dir.join(".service-lb.tmp");
    std::fs::copy(&built, &tmp).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&tmp, &binary).with_context(|| format!("placing {}", binary.display()))?;
    eprintln!(
        "MEASURED building the previous release {commit}: {:?}",
        started.elapsed()
    );
    Ok(binary)
}
