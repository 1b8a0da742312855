//! service-lb: the daemon, the data-plane layer and the CLI.
pub mod cli;
pub mod daemon;
pub mod dataplane;
pub mod model;
pub mod source;
pub mod telemetry;
