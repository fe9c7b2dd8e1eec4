//! The agent's typed errors. Each names the object it concerns and the cause;
//! [`Error::reason`] is the stable label used in metrics.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "pin directory {path}: not on a bpf filesystem (mount one: `mount -t bpf bpf {mount}`)"
    )]
    NotBpffs { path: PathBuf, mount: String },

    #[error("pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },

    #[error("pin directory {path}: {problem}; fix: {fix}")]
    UnsafePinDir {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    #[error("cgroup {path}: {source}")]
    Cgroup { path: PathBuf, source: io::Error },

    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<aya::EbpfError>),

    #[error("the eBPF object has no {what} named {name} (agent and agent-ebpf out of step?)")]
    MissingObject { what: &'static str, name: String },

    #[error("program {name}: {source}")]
    Program {
        name: String,
        source: Box<aya::programs::ProgramError>,
    },

    #[error("program {name}: pinned link {path}: {detail}")]
    Link {
        name: String,
        path: PathBuf,
        detail: String,
    },

    #[error("map {name}: {source}")]
    Map {
        name: String,
        source: Box<aya::maps::MapError>,
    },

    #[error("map {map} is full ({capacity} {unit}): cannot program {object}")]
    MapFull {
        map: &'static str,
        capacity: u32,
        /// What the capacity counts ("entries", "Maglev tables"...).
        unit: &'static str,
        object: String,
    },

    #[error("map {map} cannot be resized: {detail}")]
    Resize { map: &'static str, detail: String },

    #[error("kernel lacks {feature}: {detail}")]
    KernelFeature {
        feature: &'static str,
        detail: String,
    },

    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl Error {
    /// Label for `ferry_programming_errors_total{reason=...}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotBpffs { .. } | Error::PinDir { .. } | Error::UnsafePinDir { .. } => "pin_dir",
            Error::Cgroup { .. } => "cgroup",
            Error::Load(_) | Error::MissingObject { .. } => "load",
            Error::Program { .. } | Error::Link { .. } => "attach",
            Error::Map { .. } => "map_update",
            Error::MapFull { .. } => "map_full",
            Error::Resize { .. } => "map_resize",
            Error::KernelFeature { .. } => "kernel_feature",
            Error::Io { .. } => "io",
        }
    }

    pub fn map(name: &str, source: aya::maps::MapError) -> Self {
        Error::Map {
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    pub fn program(name: &str, source: aya::programs::ProgramError) -> Self {
        Error::Program {
            name: name.to_string(),
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
