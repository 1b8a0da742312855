//! The iptables and nft programs of this machine: which exist, which backend each is, and
//! running them with their failures typed.
//!
//! Both iptables backends may hold rules on one node (kube-proxy's image and the host may
//! disagree), so every backend that may have state is cleaned:
//! - `iptables-nft-save` / `ip6tables-nft-save` when installed (nf_tables backend);
//! - `iptables-legacy-save` / `ip6tables-legacy-save` when installed AND the kernel has
//!   legacy tables in this namespace (`/proc/net/ip_tables_names`; reading them otherwise
//!   would only load the legacy modules for nothing);
//! - else plain `iptables-save`, whatever backend it is (named from `iptables --version`).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ToolError {
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// IPv4 or IPv6 iptables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    fn prefix(self) -> &'static str {
        match self {
            Self::V4 => "iptables",
            Self::V6 => "ip6tables",
        }
    }

    fn legacy_tables_file(self) -> &'static str {
        match self {
            Self::V4 => "/proc/net/ip_tables_names",
            Self::V6 => "/proc/net/ip6_tables_names",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// One pair of save/restore programs for one family and backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    pub family: IpFamily,
    /// e.g. `iptables-nft`, `ip6tables-legacy`, `iptables (nf_tables)`.
    pub label: String,
    save: PathBuf,
    restore: PathBuf,
}

impl Iptables {
    /// The dump of every table (`iptables-save`).
    pub fn save(&self) -> Result<String, ToolError> {
        output(&mut Command::new(&self.save))
    }

    /// Applies `script` in one `iptables-restore --noflush` transaction.
    pub fn restore(&self, script: &str) -> Result<(), ToolError> {
        let command = format!("{} --noflush --wait", self.restore.display());
        let mut child = Command::new(&self.restore)
            .args(["--noflush", "--wait"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ToolError::Spawn {
                program: self.restore.display().to_string(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A restore that exits early shows up in its status and stderr below.
            let _ = stdin.write_all(script.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| ToolError::Spawn {
                program: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(ToolError::Failed {
                command,
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }
}

/// The iptables programs to clean with, for both families, and a sentence saying what
/// `iptables` itself is (for the report).
pub fn find_iptables() -> (Vec<Iptables>, String) {
    let default = match find_program("iptables") {
        Some(path) => output(Command::new(&path).arg("--version"))
            .map(|v| format!("`iptables` is {}", v.trim()))
            .unwrap_or_else(|e| format!("`iptables` is {}: {e}", path.display())),
        None => "no `iptables` installed".to_owned(),
    };
    let mut found = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let variant = |backend: &str| {
            let name = format!("{}-{backend}", family.prefix());
            let save = find_program(&format!("{name}-save"))?;
            let restore = find_program(&format!("{name}-restore"))?;
            Some(Iptables {
                family,
                label: name,
                save,
                restore,
            })
        };
        let nft = variant("nft");
        let legacy = variant("legacy").filter(|_| legacy_tables_exist(family));
        let any_variant =
            nft.is_some() || find_program(&format!("{}-legacy-save", family.prefix())).is_some();
        found.extend(nft);
        found.extend(legacy);
        if !any_variant {
            // No backend-specific programs: use whatever plain iptables is.
            let save = find_program(&format!("{}-save", family.prefix()));
            let restore = find_program(&format!("{}-restore", family.prefix()));
            if let (Some(save), Some(restore)) = (save, restore) {
                found.push(Iptables {
                    family,
                    label: family.prefix().to_owned(),
                    save,
                    restore,
                });
            }
        }
    }
    (found, default)
}

/// The legacy (x_tables) backend has tables in this network namespace.
fn legacy_tables_exist(family: IpFamily) -> bool {
    std::fs::read_to_string(family.legacy_tables_file())
        .is_ok_and(|names| names.lines().any(|l| !l.trim().is_empty()))
}

/// `nft`, when installed.
pub fn find_nft() -> Option<PathBuf> {
    find_program("nft")
}

/// `nft list tables`.
pub fn nft_list_tables(nft: &Path) -> Result<String, ToolError> {
    output(Command::new(nft).args(["list", "tables"]))
}

/// `nft delete table <family> <name>`.
pub fn nft_delete_table(nft: &Path, family: &str, name: &str) -> Result<(), ToolError> {
    output(Command::new(nft).args(["delete", "table", family, name])).map(|_| ())
}

/// The first executable file called `name` in $PATH (plus the sbin folders, which a
/// non-login root shell may lack).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn output(command: &mut Command) -> Result<String, ToolError> {
    let described = describe(command);
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            program: described.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            command: described,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `ipset`, when installed.
pub fn find_ipset() -> Option<PathBuf> {
    find_program("ipset")
}

/// `ipset list -n`: the names of the sets in this network namespace.
pub fn ipset_names(ipset: &Path) -> Result<String, ToolError> {
    output(Command::new(ipset).args(["list", "-n"]))
}

/// `ipset destroy <name>`.
pub fn ipset_destroy(ipset: &Path, name: &str) -> Result<(), ToolError> {
    output(Command::new(ipset).args(["destroy", name])).map(|_| ())
}

fn ip_program() -> PathBuf {
    find_program("ip").unwrap_or_else(|| PathBuf::from("ip"))
}

/// Whether the interface `name` exists in this network namespace (asked with netlink
/// through `ip`: /sys may show another namespace's interfaces).
pub fn link_exists(name: &str) -> bool {
    output(
        Command::new(ip_program())
            .args(["-o", "link", "show", "dev", name])
            .stderr(Stdio::null()),
    )
    .is_ok_and(|out| !out.trim().is_empty())
}

/// `ip link delete <name>`.
pub fn link_delete(name: &str) -> Result<(), ToolError> {
    output(Command::new(ip_program()).args(["link", "delete", name])).map(|_| ())
}

/// Whether this kernel has IPVS loaded (`/proc/net/ip_vs`).
pub fn ipvs_loaded() -> bool {
    Path::new("/proc/net/ip_vs").exists()
}

/// `ipvsadm -Sn` (the virtual servers), when ipvsadm is installed.
pub fn ipvs_save() -> Option<Result<String, ToolError>> {
    find_program("ipvsadm").map(|p| output(Command::new(p).arg("-Sn")))
}

/// `ip -o addr show dev <name>` (empty when it does not exist).
pub fn link_addresses(name: &str) -> String {
    output(
        Command::new(ip_program())
            .args(["-o", "addr", "show", "dev", name])
            .stderr(Stdio::null()),
    )
    .unwrap_or_default()
}

/// `ipvsadm <args>` (e.g. `-D -t 198.19.0.10:80`).
pub fn ipvsadm(args: &[String]) -> Result<(), ToolError> {
    let program = find_program("ipvsadm").unwrap_or_else(|| PathBuf::from("ipvsadm"));
    output(Command::new(program).args(args)).map(|_| ())
}
