//! Telemetry: logging setup here (`tracing` to stderr, plain or JSON, level from `-v`,
//! RUST_LOG wins); Prometheus metrics in `metrics` (`process_*` in `process`), health verdicts in `health`, the admin
//! HTTP servers in `http`.

use tracing_subscriber::{fmt, EnvFilter};

pub mod health;
pub mod http;
pub mod metrics;
pub mod policy_metrics;
pub mod process;
pub mod service_health;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// The default filter for a verbosity count: 0 = info, 1 = debug, 2+ = trace.
pub fn default_filter(verbose: u8) -> &'static str {
    match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber. Calling it twice keeps the first one.
pub fn init(format: LogFormat, verbose: u8) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(verbose)));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // Already installed (tests, or a library user): keep theirs.
    drop(result);
}
