//! Errors of loading, pinning and attaching (map writes have their own, `WriteError`).

use std::{io, path::PathBuf};

use super::layout::MapLayout;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{0}")]
    StubObject(&'static str),

    #[error(
        "{path} is not on a bpf filesystem (found filesystem magic {found:#x}); mount one with \
         `mount -t bpf bpf /sys/fs/bpf` or pass a folder under a bpffs mount"
    )]
    NotBpffs { path: PathBuf, found: i64 },

    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "pinned map {map} at {path} has layout [{pinned}] but this binary wants [{wanted}]; \
         refusing to reuse it (run `service-lb cleanup` or pass --recreate-mismatched-maps, which \
         loses conntrack and breaks established connections)"
    )]
    PinLayoutMismatch {
        map: &'static str,
        path: PathBuf,
        pinned: MapLayout,
        wanted: MapLayout,
    },

    #[error(
        "pinned maps under {path} were written with layout version {found}, this binary \
         writes version {wanted}"
    )]
    LayoutVersionMismatch {
        path: PathBuf,
        found: u32,
        wanted: u32,
    },

    #[error("the eBPF object's map {map} does not match the common crate's layout: {source}")]
    ObjectMapMismatch {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },

    #[error("the eBPF object's map {map} is a {found} map, the common crate wants {wanted}")]
    ObjectMapKind {
        map: &'static str,
        found: &'static str,
        wanted: super::layout::MapKind,
    },

    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),

    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),

    #[error("map {map}: {source}")]
    Map {
        map: String,
        #[source]
        source: aya::maps::MapError,
    },

    #[error(transparent)]
    Store(#[from] super::maps::StoreError),

    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),

    #[error("program {program}: {what}: {source}")]
    Program {
        program: &'static str,
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },

    #[error("invalid interface glob {glob:?}: {source}")]
    BadGlob {
        glob: String,
        #[source]
        source: glob::PatternError,
    },

    #[error("interface {0} matches both the pod and the external interface globs")]
    InterfaceInBothRoles(String),

    #[error("listing the interfaces of this network namespace: {0}")]
    ListInterfaces(#[source] nix::Error),

    #[error("interface {ifname} hook {hook}: {what}: {source}")]
    Attach {
        ifname: String,
        hook: &'static str,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    #[error("socket LB program {program} on cgroup {cgroup}: {what}: {source}")]
    SockAttach {
        program: &'static str,
        cgroup: PathBuf,
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl DataplaneError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            what,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn map(map: impl Into<String>, source: aya::maps::MapError) -> Self {
        Self::Map {
            map: map.into(),
            source,
        }
    }
}
