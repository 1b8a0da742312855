//! `cargo xtask setup`: make a fresh machine of the project's kind (Debian 12, root, rustup
//! with stable + nightly) able to build and test service-lb. Idempotent: each step checks
//! first and says whether it did something. The recipe is `shared/notes/toolchain.md`.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::shell;

const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";
/// Debian packages the tests, demo and benchmarks use, with a command each provides.
/// iptables, nftables and ipset: the kube-proxy clean-up test (inside its own namespace only).
const DEBIAN_PACKAGES: [(&str, &str); 5] = [
    ("iproute2", "ip"),
    ("util-linux", "nsenter"),
    ("iptables", "iptables"),
    ("nftables", "nft"),
    ("ipset", "ipset"),
];
/// The manifest validator (PyPI), pinned; installed into [`validation_venv`].
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

pub fn run() -> Result<()> {
    eprintln!("xtask setup: checking this machine");
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    bpffs()?;
    validation_venv_installed()?;
    eprintln!("xtask setup: done");
    Ok(())
}

/// Only the build toolchain (the image's build stage: no test tools, no mounts).
pub fn run_build_only() -> Result<()> {
    eprintln!("xtask setup: checking the build toolchain");
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("xtask setup: done");
    Ok(())
}

/// The virtualenv holding `kubernetes-validate`: `$XDG_CACHE_HOME/service-lb/venv`, else
/// `~/.cache/service-lb/venv` (tests/tests/deploy_manifests.rs looks in the same place).
pub fn validation_venv() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").context("HOME is not set")?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("service-lb").join("venv"))
}

fn validation_venv_installed() -> Result<()> {
    let venv = validation_venv()?;
    let validator = venv.join("bin").join("kubernetes-validate");
    let pinned = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    if let Ok(version) = shell::output(Command::new(&validator).arg("--version")) {
        if version.contains(pinned) {
            say(&format!(
                "kubernetes-validate {pinned}: already in {}",
                venv.display()
            ));
            return Ok(());
        }
    }
    say(&format!(
        "kubernetes-validate {pinned}: installing into {}",
        venv.display()
    ));
    if !shell::succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"])) {
        say("python3 venv support missing: installing python3-venv");
        shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
        shell::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(["python3", "python3-venv"]),
        )?;
    }
    if !venv.join("bin").join("pip").exists() {
        shell::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    shell::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )
}

fn say(what: &str) {
    eprintln!("  - {what}");
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = shell::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        say("installing the nightly toolchain (needed to build the eBPF programs)");
        shell::run(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = shell::output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src: already installed");
    } else {
        say("nightly rust-src: installing");
        shell::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

/// bpf-linker 0.13 linked against the nightly's own libLLVM (same LLVM major as rustc).
fn bpf_linker() -> Result<()> {
    let linker = cargo_home()?.join("bin").join("bpf-linker");
    if let Ok(version) = shell::output(Command::new(&linker).arg("--version")) {
        if version.contains(BPF_LINKER_VERSION) {
            say(&format!(
                "bpf-linker {BPF_LINKER_VERSION}: already installed"
            ));
            return Ok(());
        }
    }
    say(&format!(
        "bpf-linker {BPF_LINKER_VERSION}: building against the nightly's libLLVM (about a minute)"
    ));
    let sysroot =
        shell::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let llvm_so = fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .min()
        .with_context(|| format!("no libLLVM.so.* in {}", nightly_lib.display()))?;
    let llvm_major = llvm_major(&llvm_so)?;
    let prefix = cargo_home()?.join("llvm-for-bpf-linker");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let so_name = llvm_so
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(so_name)] {
        let _ = fs::remove_file(&link);
        symlink(&llvm_so, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    shell::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ]),
    )
}

/// "libLLVM.so.22.1-rust-1.97.0-nightly" -> "22".
fn llvm_major(so: &Path) -> Result<String> {
    let name = so
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let major: String = name
        .trim_start_matches("libLLVM.so.")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    if major.is_empty() {
        bail!("cannot read the LLVM major version from {name}");
    }
    Ok(major)
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .filter(|(_, cmd)| {
            !shell::succeeds(Command::new("sh").args(["-c", &format!("command -v {cmd}")]))
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        say("Debian packages: all present");
        return Ok(());
    }
    say(&format!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    shell::run(Command::new("apt-get").args(["update", "-qq"]))?;
    shell::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    });
    if mounted {
        say("bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    say("bpffs at /sys/fs/bpf: mounting");
    shell::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
}
