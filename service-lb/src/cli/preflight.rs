//! The kernel feature check `service-lb run` does before anything else touches the system:
//! a node that cannot run the data plane fails at once with one sentence naming what is
//! missing, instead of a verifier log or an attach error later.
//!
//! Required: Linux >= 6.6, kernel BTF (`/sys/kernel/btf/vmlinux`), TCX (the kernel's BTF
//! names `struct tcx_link`; programs attach through TCX links), a cgroup v2 hierarchy
//! (`/sys/fs/cgroup` or, on hybrid set-ups, `/sys/fs/cgroup/unified`). Reported, not
//! required (nothing running uses it yet): `CONFIG_INET_DIAG_DESTROY`, read from
//! `/proc/config.gz` or `/boot/config-<release>` when either exists.
//!
//! Every path is a field of [`Probes`], so tests simulate a node without a feature.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

/// The oldest kernel with TCX links (the programs' attach mode).
pub const MIN_KERNEL: (u32, u32) = (6, 6);
/// A type name that exists in the kernel's BTF exactly when TCX is built in.
const TCX_BTF_NAME: &[u8] = b"\0tcx_link\0";

/// Where each feature is looked for.
#[derive(Clone, Debug)]
pub struct Probes {
    /// `uname -r`.
    pub osrelease: PathBuf,
    pub btf_vmlinux: PathBuf,
    /// Candidate cgroup v2 mount points, the first that is cgroup2fs wins.
    pub cgroup2: Vec<PathBuf>,
    /// Kernel configuration files; `.gz` ones are gunzipped.
    pub kernel_configs: Vec<PathBuf>,
}

impl Probes {
    /// This machine's paths.
    pub fn system() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|r| r.trim().to_owned())
            .unwrap_or_default();
        Self {
            osrelease: "/proc/sys/kernel/osrelease".into(),
            btf_vmlinux: "/sys/kernel/btf/vmlinux".into(),
            cgroup2: vec!["/sys/fs/cgroup".into(), "/sys/fs/cgroup/unified".into()],
            kernel_configs: vec![
                "/proc/config.gz".into(),
                PathBuf::from(format!("/boot/config-{release}")),
            ],
        }
    }
}

/// A missing feature: each message is one sentence that names it and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Missing {
    #[error(
        "this node's kernel is {release}, service-lb needs Linux >= {}.{} (TCX program \
         attachment): upgrade the node's kernel",
        MIN_KERNEL.0,
        MIN_KERNEL.1
    )]
    OldKernel { release: String },
    #[error("cannot read the kernel version from {path}: {error}")]
    UnknownKernel { path: PathBuf, error: String },
    #[error(
        "this node's kernel has no BTF ({path} is missing): service-lb needs a kernel built \
         with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: PathBuf },
    #[error(
        "this node's kernel has no TCX (its BTF has no tcx_link): service-lb needs a kernel \
         built with CONFIG_NET_XGRESS=y (Linux >= 6.6)"
    )]
    NoTcx,
    #[error(
        "no cgroup v2 hierarchy is mounted (looked at {looked}): service-lb needs cgroup v2 \
         (systemd.unified_cgroup_hierarchy=1, or the hybrid /sys/fs/cgroup/unified)"
    )]
    NoCgroup2 { looked: String },
}

/// What the check found besides a failure (printed as info/warnings).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub release: String,
    pub cgroup2: PathBuf,
    /// `Some(true/false)` when a kernel configuration was readable.
    pub inet_diag_destroy: Option<bool>,
}

/// Runs every check in order; the first missing feature is the error.
pub fn check(probes: &Probes) -> Result<Report, Missing> {
    let release = std::fs::read_to_string(&probes.osrelease)
        .map_err(|e| Missing::UnknownKernel {
            path: probes.osrelease.clone(),
            error: e.to_string(),
        })?
        .trim()
        .to_owned();
    let version = parse_release(&release).ok_or_else(|| Missing::UnknownKernel {
        path: probes.osrelease.clone(),
        error: format!("{release:?} is not a kernel release"),
    })?;
    if version < MIN_KERNEL {
        return Err(Missing::OldKernel { release });
    }
    let btf = std::fs::read(&probes.btf_vmlinux).map_err(|_| Missing::NoBtf {
        path: probes.btf_vmlinux.clone(),
    })?;
    if !contains(&btf, TCX_BTF_NAME) {
        return Err(Missing::NoTcx);
    }
    let cgroup2 = probes
        .cgroup2
        .iter()
        .find(|p| is_cgroup2(p))
        .cloned()
        .ok_or_else(|| Missing::NoCgroup2 {
            looked: probes
                .cgroup2
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let inet_diag_destroy = probes
        .kernel_configs
        .iter()
        .find_map(|p| read_config(p))
        .map(|config| {
            config
                .lines()
                .any(|l| l.trim() == "CONFIG_INET_DIAG_DESTROY=y")
        });
    Ok(Report {
        release,
        cgroup2,
        inet_diag_destroy,
    })
}

/// `6.6.0-amd64` -> (6, 6); `6.18.44-fc` -> (6, 18).
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

fn read_config(path: &Path) -> Option<String> {
    let raw = std::fs::read(path).ok()?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_string(&mut text)
            .ok()?;
        Some(text)
    } else {
        String::from_utf8(raw).ok()
    }
}

/// The check as `run` does it: logs what was found, returns the one-sentence failure.
pub fn run(probes: &Probes) -> Result<(), Missing> {
    let report = check(probes)?;
    tracing::info!(
        kernel = %report.release,
        cgroup2 = %report.cgroup2.display(),
        "kernel features: BTF, TCX and cgroup v2 present"
    );
    match report.inet_diag_destroy {
        Some(true) => {}
        Some(false) => tracing::warn!(
            "the kernel lacks CONFIG_INET_DIAG_DESTROY: sockets connected to a removed \
             backend cannot be closed by socket-level load balancing once it lands"
        ),
        None => {
            tracing::info!("kernel configuration not readable: CONFIG_INET_DIAG_DESTROY unknown")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake node: files in a temporary folder, cgroup v2 pointed wherever the test says.
    struct Node {
        dir: tempfile::TempDir,
        probes: Probes,
    }

    impl Node {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let p = |n: &str| dir.path().join(n);
            std::fs::write(p("osrelease"), "6.6.0-14-amd64\n").unwrap();
            std::fs::write(p("vmlinux"), b"\x9f\xeb\x01\0task_struct\0tcx_link\0").unwrap();
            std::fs::write(p("config"), "CONFIG_BPF=y\nCONFIG_INET_DIAG_DESTROY=y\n").unwrap();
            let probes = Probes {
                osrelease: p("osrelease"),
                btf_vmlinux: p("vmlinux"),
                // Filled in by each test: a real cgroup2 mount, or a plain folder.
                cgroup2: vec![],
                kernel_configs: vec![p("config.gz"), p("config")],
            };
            Self { dir, probes }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    /// This machine's cgroup v2 mount, if it has one (the test is skipped without).
    fn host_cgroup2() -> Option<PathBuf> {
        Probes::system().cgroup2.into_iter().find(|p| is_cgroup2(p))
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_release("6.6.0-14-amd64"), Some((6, 6)));
        assert_eq!(parse_release("6.18.44-fc-v1147"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0"), Some((5, 15)));
        assert_eq!(parse_release("6.10"), Some((6, 10)));
        assert_eq!(parse_release("6.1-rc3"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
        assert!(parse_release("6.5.9").unwrap() < MIN_KERNEL);
        assert!(parse_release("6.10.0").unwrap() > MIN_KERNEL);
    }

    #[test]
    fn a_complete_node_passes_and_reports_inet_diag_destroy() {
        let Some(cgroup2) = host_cgroup2() else {
            eprintln!("skipped: no cgroup v2 on this machine");
            return;
        };
        let mut node = Node::new();
        node.probes.cgroup2 = vec![node.path("not-cgroup"), cgroup2.clone()];
        let report = check(&node.probes).expect("passes");
        assert_eq!(report.release, "6.6.0-14-amd64");
        assert_eq!(report.cgroup2, cgroup2);
        assert_eq!(report.inet_diag_destroy, Some(true));
        std::fs::write(
            node.path("config"),
            "# CONFIG_INET_DIAG_DESTROY is not set\n",
        )
        .unwrap();
        assert_eq!(check(&node.probes).unwrap().inet_diag_destroy, Some(false));
        std::fs::remove_file(node.path("config")).unwrap();
        assert_eq!(check(&node.probes).unwrap().inet_diag_destroy, None);
    }

    #[test]
    fn a_gzipped_config_is_read() {
        let node = Node::new();
        let gz = node.path("config.gz");
        let file = std::fs::File::create(&gz).unwrap();
        let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        std::io::Write::write_all(&mut enc, b"CONFIG_INET_DIAG_DESTROY=y\n").unwrap();
        enc.finish().unwrap();
        assert_eq!(
            read_config(&gz).as_deref(),
            Some("CONFIG_INET_DIAG_DESTROY=y\n")
        );
    }

    #[test]
    fn each_missing_feature_is_one_sentence_naming_it() {
        let cgroup2 = host_cgroup2();
        type Break = fn(&Node, &mut Probes);
        let cases: [(&str, Break, &[&str]); 6] = [
            (
                "old kernel",
                |n, _| std::fs::write(n.path("osrelease"), "6.1.0-18-amd64\n").unwrap(),
                &["6.1.0-18-amd64", "Linux >= 6.6", "upgrade"],
            ),
            (
                "unreadable release",
                |n, _| std::fs::write(n.path("osrelease"), "banana\n").unwrap(),
                &["kernel version", "banana"],
            ),
            (
                "no BTF",
                |n, _| std::fs::remove_file(n.path("vmlinux")).unwrap(),
                &["no BTF", "vmlinux is missing", "CONFIG_DEBUG_INFO_BTF"],
            ),
            (
                "no TCX",
                |n, _| std::fs::write(n.path("vmlinux"), b"\0task_struct\0tcx_linkage\0").unwrap(),
                &["no TCX", "CONFIG_NET_XGRESS"],
            ),
            (
                "no cgroup v2",
                |n, p| p.cgroup2 = vec![n.path("osrelease"), n.dir.path().to_path_buf()],
                &["no cgroup v2", "looked at", "unified"],
            ),
            (
                "no cgroup v2 candidates exist",
                |n, p| p.cgroup2 = vec![n.path("nope")],
                &["no cgroup v2", "nope"],
            ),
        ];
        for (what, break_it, words) in cases {
            let node = Node::new();
            let mut probes = node.probes.clone();
            probes.cgroup2 = cgroup2.clone().into_iter().collect();
            if probes.cgroup2.is_empty() && !what.starts_with("no cgroup") {
                eprintln!("{what}: skipped, no cgroup v2 on this machine");
                continue;
            }
            break_it(&node, &mut probes);
            let err = check(&probes).expect_err(what).to_string();
            println!("{what}: {err}");
            for word in words {
                assert!(err.contains(word), "{what}: {word:?} not in {err:?}");
            }
            assert_eq!(err.lines().count(), 1, "{what}: one line");
            assert_eq!(err.matches(". ").count(), 0, "{what}: one sentence: {err}");
        }
    }
}
