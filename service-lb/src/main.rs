//! The `service-lb` binary: everything lives in the library (`cli::main`).
fn main() -> std::process::ExitCode {
    service_lb::cli::main()
}
