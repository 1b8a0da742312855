//! `service-lb cleanup`: detach every program, unpin every map, remove the folder (and the
//! daemon's policy snapshot).

use std::path::PathBuf;

use clap::Args;

use super::Failure;
use crate::dataplane::{self, DEFAULT_BPFFS};

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// bpffs folder of the data plane.
    #[arg(long, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

pub fn run(args: &CleanupArgs) -> Result<(), Failure> {
    let cleaned = dataplane::cleanup(&args.bpffs)?;
    if let Err(e) = crate::daemon::policy::remove_snapshot(&args.bpffs) {
        tracing::warn!(error = %e, "cannot remove the policy snapshot");
    }
    println!(
        "removed {} link(s) and {} map pin(s) under {}",
        cleaned.links,
        cleaned.maps,
        args.bpffs.display()
    );
    Ok(())
}
