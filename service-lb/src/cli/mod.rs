//! The `service-lb` command line: one module per subcommand.

use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

pub mod attach;
pub mod cleanup;
pub mod cleanup_kube_proxy;
pub mod completions;
pub mod config_file;
pub mod diff;
pub mod inspect;
pub mod output;
pub mod preflight;
pub mod run;
pub mod socket_lb;

/// Exit code of a usage or configuration error (sysexits EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "service-lb", version, about = "eBPF kube-proxy replacement")]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// More logs (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: watch the cluster (API or a manifests folder) and keep the maps in sync.
    Run(Box<run::RunArgs>),
    /// Load the programs (maps pinned), attach them to this namespace's interfaces, exit.
    Attach(attach::AttachArgs),
    /// Show the data plane's own view, read from the pinned maps (no daemon needed).
    Inspect(inspect::InspectArgs),
    /// Detach every program and remove every pin of the data plane.
    Cleanup(cleanup::CleanupArgs),
    /// Compare what the cluster (API or manifests) wants with what the pinned maps hold,
    /// Service by Service. Exit code 0 when equal, 1 when they differ, 2 on error.
    Diff(diff::DiffArgs),
    /// Remove kube-proxy's iptables chains and nftables tables from this node.
    CleanupKubeProxy(cleanup_kube_proxy::CleanupKubeProxyArgs),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Print the man page (roff): `service-lb man > /usr/local/share/man/man1/service-lb.1`.
    Man,
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub usage: bool,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            usage: true,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Self {
            usage: false,
            error: error.into(),
        }
    }
}

/// Parses the arguments, runs the command and returns the process exit code.
pub fn main() -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    // `run --config FILE`: the file's settings become arguments (config_file).
    let applied = match config_file::apply(&Cli::command(), std::env::args_os().collect(), &env) {
        Ok(applied) => applied,
        Err(e) => {
            eprintln!("service-lb: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let parsed = Cli::command()
        .try_get_matches_from(&applied.argv)
        .and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            let usage = e.use_stderr();
            // Help and version go to stdout and are not errors.
            let _ = e.print();
            return if usage {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let (Command::Run(args), Some(run)) = (&cli.command, matches.subcommand_matches("run")) {
        if args.print_config {
            print!(
                "{}",
                config_file::effective_yaml(&Cli::command(), run, &applied.from_file)
            );
            return ExitCode::SUCCESS;
        }
    }
    telemetry::init(cli.log_format, cli.verbose);
    if let Command::Diff(args) = &cli.command {
        return match diff::run(args) {
            Ok(diff::Outcome::Equal) => ExitCode::SUCCESS,
            Ok(diff::Outcome::Differ) => ExitCode::from(diff::EXIT_DIFFER),
            Err(error) => {
                eprintln!("service-lb: {error:#}");
                ExitCode::from(diff::EXIT_ERROR)
            }
        };
    }
    let result = match &cli.command {
        Command::Run(args) => run::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Cleanup(args) => cleanup::run(args),
        Command::CleanupKubeProxy(args) => cleanup_kube_proxy::run(args),
        Command::Diff(_) => Ok(()),
        Command::Completions(args) => completions::run_completions(args),
        Command::Man => completions::run_man(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { usage, error }) => {
            eprintln!("service-lb: {error:#}");
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_inspect_and_global_flags() {
        let cli = Cli::try_parse_from([
            "service-lb",
            "inspect",
            "counters",
            "-o",
            "json",
            "--all",
            "--bpffs",
            "/sys/fs/bpf/x",
            "-vv",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Inspect(args) = cli.command else {
            panic!("not inspect")
        };
        assert_eq!(args.bpffs.to_str(), Some("/sys/fs/bpf/x"));
        assert_eq!(args.output, output::Format::Json);
        assert!(matches!(args.what, inspect::What::Counters { all: true }));
    }

    #[test]
    fn an_unknown_table_is_a_usage_error() {
        let e = Cli::try_parse_from(["service-lb", "inspect", "tables"]).unwrap_err();
        assert!(e.use_stderr());
    }
}
