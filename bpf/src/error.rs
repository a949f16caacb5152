use std::path::PathBuf;

/// Everything that can go wrong loading, attaching or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("{path} is not a bpffs mount (mount it: `mount -t bpf bpf /sys/fs/bpf`)")]
    BpffsNotMounted { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {kind} `{name}`")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    #[error("entering network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no datapath pinned under {path} (is the agent loaded? run `cnpilot agent`)")]
    NotPinned { path: PathBuf },
    #[error("namespace id {ns_id} has mode value {value}, which is none of off/audit/enforce")]
    BadMode { ns_id: u32, value: u32 },
}

impl DatapathError {
    pub(crate) fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
        move |source| DatapathError::Map { map, source }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> DatapathError {
        let path = path.into();
        move |source| DatapathError::Io { what, path, source }
    }
}
