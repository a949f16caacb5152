//! The agent's one error type. Callers see which part failed (the
//! datapath, the inventory, the policies, the proxy, the flow store, the
//! local socket, another agent) and the chain of what was being done.

use std::error::Error as StdError;

/// Everything `Agent::start` and `Agent::run` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent holds this pin directory.
    #[error("{0}")]
    AlreadyRunning(String),
    /// Loading, attaching or programming the eBPF datapath.
    #[error(transparent)]
    Datapath(#[from] cnpilot_bpf::DatapathError),
    /// Reading the inventory (a snapshot file, the lab's, the cluster's).
    #[error(transparent)]
    Inventory(#[from] cnpilot_learner::inventory::InventoryError),
    /// A system command (`ip`, `sysctl`) failed; its stderr is in it.
    #[error(transparent)]
    Command(#[from] cnpilot_bpf::sys::CommandError),
    /// The L7 proxy could not start.
    #[error(transparent)]
    Proxy(#[from] cnpilot_proxy::listener::ProxyError),
    /// The flow store could not take a record.
    #[error(transparent)]
    Store(#[from] cnpilot_learner::store::StoreError),
    /// An I/O error the agent had nothing to add to (the socket's
    /// per-client writes).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Something the agent was doing failed; `what` says what.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A condition the agent cannot work under, said in full.
    #[error("{0}")]
    Invalid(String),
}

/// Results of the agent crate.
pub type Result<T, E = AgentError> = std::result::Result<T, E>;

impl AgentError {
    pub(crate) fn invalid(text: impl Into<String>) -> Self {
        AgentError::Invalid(text.into())
    }
}

/// `anyhow`-like context for the crate's typed error: what was being done
/// when the underlying error happened.
pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: StdError + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| AgentError::Context {
            what: what.into(),
            source: Box::new(e),
        })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| AgentError::Context {
            what: what().into(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| AgentError::Invalid(what.into()))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| AgentError::Invalid(what().into()))
    }
}

/// `bail!` for the crate's typed error.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::AgentError::Invalid(format!($($arg)*)))
    };
}

/// `ensure!` for the crate's typed error.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::error::bail!($($arg)*);
        }
    };
}

pub(crate) use {bail, ensure};
