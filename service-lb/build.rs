//! Builds the eBPF object (crate `service-lb-ebpf`, bin `service-lb`) into OUT_DIR with
//! aya-build. When the eBPF toolchain is missing (no bpf-linker, e.g. a plain
//! `cargo check` or clippy on a machine without `cargo xtask setup`) or AYA_BUILD_SKIP=1,
//! an empty stub is written instead: everything compiles, and loading fails with a clear
//! error that says how to get the real object.

use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

const OBJECT: &str = "service-lb";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let manifest_dir = PathBuf::from(
        env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?,
    );
    let workspace = manifest_dir
        .parent()
        .context("service-lb has no parent folder")?;
    let ebpf_dir = workspace.join("service-lb-ebpf");
    let common_dir = workspace.join("service-lb-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    println!("cargo:rerun-if-env-changed=PATH");
    println!("cargo:rerun-if-env-changed=SERVICE_LB_REQUIRE_EBPF");
    println!("cargo::rustc-check-cfg=cfg(service_lb_stub_ebpf)");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    let have_linker = which_bpf_linker();
    let require = env::var("SERVICE_LB_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    if require && (skip || !have_linker) {
        anyhow::bail!(
            "SERVICE_LB_REQUIRE_EBPF=1 but the eBPF object cannot be built (bpf-linker on PATH: \
             {have_linker}, AYA_BUILD_SKIP: {skip}); run `cargo xtask setup`"
        );
    }
    if skip || !have_linker {
        let why = if skip {
            "AYA_BUILD_SKIP is set"
        } else {
            "bpf-linker is not on PATH"
        };
        println!("cargo:warning=service-lb: {why}; writing a stub eBPF object (run `cargo xtask setup` for the real one)");
        fs::write(out_dir.join(OBJECT), b"").context("writing the stub eBPF object")?;
        println!("cargo:rustc-cfg=service_lb_stub_ebpf");
        return Ok(());
    }

    let root_dir = ebpf_dir
        .to_str()
        .context("service-lb-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "service-lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

fn which_bpf_linker() -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file())
}
