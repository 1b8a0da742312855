//! `service-lb inspect services|backends|conntrack|affinity|counters|sockets|snat`: reads the
//! pinned maps directly (no daemon, no program load). `inspect policy` reads the daemon's policy
//! snapshot file instead (names the maps do not hold).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::{output::Format, Failure};
use crate::dataplane::{pin, BpfMaps, DEFAULT_BPFFS};

pub mod affinity;
pub mod backends;
pub mod conntrack;
pub mod counters;
pub mod policy;
pub mod services;
pub mod snat;
pub mod sockets;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(subcommand)]
    pub what: What,
    /// Output format (table, json or yaml).
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// bpffs folder of the data plane.
    #[arg(long, global = true, default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum What {
    /// One row per frontend: its Service (namespace/name, port name, kind) and backends.
    Services {
        #[command(flatten)]
        filter: services::ServiceFilter,
    },
    /// Every backend by id: state (active, terminating, draining) and live connections.
    Backends,
    /// Every entry of the four conntrack maps.
    Conntrack,
    /// Every sessionAffinity ClientIP entry: client, frontend, backend, age.
    Affinity,
    /// Packets and bytes per hook and reason, summed over CPUs.
    Counters {
        /// Also show counters that are zero.
        #[arg(long)]
        all: bool,
    },
    /// Socket LB reverse entries: socket cookie, backend, and the frontend the socket sees.
    Sockets,
    /// North-south flows SNATed to this node: client, node address:port, backend.
    Snat,
    /// Each local pod's effective NetworkPolicy: per direction, the policies isolating it
    /// and the allowed peers and ports (from the snapshot the daemon writes on each policy
    /// sync).
    Policy {
        /// Only this pod (`namespace/name`).
        #[arg(long)]
        pod: Option<String>,
        /// The snapshot file; default: the one of the daemon pinned under --bpffs.
        #[arg(long)]
        snapshot: Option<PathBuf>,
    },
}

pub fn run(args: &InspectArgs) -> Result<(), Failure> {
    if let What::Policy { pod, snapshot } = &args.what {
        let path = snapshot
            .clone()
            .unwrap_or_else(|| crate::daemon::policy::snapshot_path(&args.bpffs));
        let snapshot = policy::read(&path)?;
        let pods = policy::select(&snapshot, pod.as_deref()).map_err(Failure::usage)?;
        let text = match args.output {
            super::output::Format::Json => {
                serde_json::to_string_pretty(&policy::json(&snapshot, &pods))
                    .context("encoding the policy snapshot")?
            }
            super::output::Format::Yaml => serde_saphyr::to_string(&policy::json(&snapshot, &pods))
                .context("encoding the policy snapshot")?,
            super::output::Format::Table => {
                super::output::render(&policy::rows(&snapshot, &pods)?, args.output)?
            }
        };
        super::output::print(&text)?;
        return Ok(());
    }
    if !pin::maps_dir(&args.bpffs).is_dir() {
        return Err(Failure::usage(anyhow::anyhow!(
            "no data plane is pinned under {} (is the daemon installed? is --bpffs right?)",
            args.bpffs.display()
        )));
    }
    let maps = BpfMaps::open_pinned(&args.bpffs)
        .with_context(|| format!("opening the pinned maps under {}", args.bpffs.display()))?;
    let text = match args.what {
        What::Services { ref filter } => {
            let rows: Vec<_> = services::rows(&maps)?
                .into_iter()
                .filter(|r| filter.keeps(r))
                .collect();
            super::output::render(&rows, args.output)?
        }
        What::Backends => {
            let now = conntrack::boottime_ns()?;
            let flows = conntrack::live_flows(&maps.conntrack()?, now);
            super::output::render(&backends::rows(&maps, &flows)?, args.output)?
        }
        What::Conntrack => {
            let now = conntrack::boottime_ns()?;
            super::output::render(&conntrack::rows(&maps.conntrack()?, now), args.output)?
        }
        What::Affinity => {
            let now = conntrack::boottime_ns()?;
            let records = maps.affinity()?;
            super::output::render(&affinity::rows(&records, &maps, now)?, args.output)?
        }
        What::Counters { all } => {
            super::output::render(&counters::rows(&maps.counters()?, all), args.output)?
        }
        What::Sockets => {
            let records = crate::dataplane::sock::reverse_entries(&args.bpffs)?;
            super::output::render(&sockets::rows(&records), args.output)?
        }
        What::Snat => {
            let records = crate::dataplane::snat::entries(&args.bpffs)?;
            super::output::render(&snat::rows(&records), args.output)?
        }
        // Read from the snapshot above, not from the maps.
        What::Policy { .. } => return Ok(()),
    };
    super::output::print(&text)?;
    Ok(())
}
