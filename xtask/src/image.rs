//! `cargo xtask image`: build the container image from `deploy/Dockerfile` with the first
//! container engine that works here (docker, podman, buildah; or the one asked for). With
//! none, it fails with a message saying so and how to build elsewhere.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::shell;

#[derive(Args)]
pub struct ImageArgs {
    /// Image reference to tag the build with.
    #[arg(long, default_value_t = format!("service-lb:{}", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// Use this engine (docker, podman or buildah) instead of the first that works.
    #[arg(long)]
    engine: Option<String>,
}

/// The engines tried, in order, with the command that proves each can build here.
const ENGINES: [(&str, &[&str]); 3] = [
    ("docker", &["info"]),
    ("podman", &["info"]),
    ("buildah", &["info"]),
];

pub fn run(args: &ImageArgs) -> Result<()> {
    let root = workspace_root()?;
    let engine = match &args.engine {
        Some(name) => {
            let probe = ENGINES
                .iter()
                .find(|(e, _)| e == name)
                .with_context(|| format!("unknown engine {name:?} (docker, podman, buildah)"))?;
            if let Err(why) = probe_engine(probe) {
                bail!("{name} cannot build here: {why}");
            }
            name.clone()
        }
        None => pick_engine()?,
    };
    eprintln!("xtask image: building {} with {engine}", args.tag);
    let mut build = Command::new(&engine);
    match engine.as_str() {
        "buildah" => build.arg("bud"),
        _ => build.arg("build"),
    };
    build
        .args(["--file", "deploy/Dockerfile", "--tag", &args.tag, "."])
        .current_dir(&root);
    if engine == "docker" {
        // deploy/Dockerfile.dockerignore keeps target/ and .git out of the context.
        build.env("DOCKER_BUILDKIT", "1");
    }
    shell::run(&mut build)?;
    eprintln!(
        "xtask image: built {}; push it to your registry and set the image in an overlay of \
         deploy/kustomization.yaml (see deploy/README.md)",
        args.tag
    );
    Ok(())
}

/// The first engine whose `info` succeeds, or an error listing why each was refused.
fn pick_engine() -> Result<String> {
    let mut refusals = Vec::new();
    for probe in &ENGINES {
        match probe_engine(probe) {
            Ok(()) => return Ok(probe.0.to_owned()),
            Err(why) => refusals.push(format!("  - {}: {why}", probe.0)),
        }
    }
    bail!(
        "no container engine is available on this machine, so no image was built:\n{}\n\
         Install and start one of them, or build on a machine that has one with\n  \
         docker build -f deploy/Dockerfile -t service-lb:{} .",
        refusals.join("\n"),
        env!("CARGO_PKG_VERSION")
    )
}

/// Ok when `<engine> info` runs and succeeds; else why not, in a few words.
fn probe_engine((engine, args): &(&str, &[&str])) -> Result<(), String> {
    match Command::new(engine).args(*args).output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("not installed".to_owned()),
        Err(e) => Err(format!("cannot start it: {e}")),
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("no message");
            Err(format!("`{engine} info` failed: {reason}"))
        }
    }
}

fn workspace_root() -> Result<PathBuf> {
    let xtask = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    xtask
        .parent()
        .map(PathBuf::from)
        .context("xtask has no parent folder")
}
