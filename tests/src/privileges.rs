//! Privileged tests need root (BPF, netns, bpffs). Outside CI they skip with a message
//! when unprivileged; with `CI=true` they fail loudly instead.

/// Returns `true` when the test may run. Without root: panics under `CI=true`, else prints
/// why the test is skipped and returns `false`.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if ci {
        panic!("{test}: needs root (BPF, network namespaces) and CI=true forbids skipping");
    }
    eprintln!("{test}: skipped, needs root (run `cargo xtask test` as root)");
    false
}
