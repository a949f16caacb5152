//! The cnpilot node agent: loads the datapath, attaches it to this node's
//! pods as an [`InventorySource`] reports them, programs its maps from
//! policies (staged proposals included), runs the L7 proxy, and streams
//! flow events to a writer, the local socket and the flow store.
//!
//! [`Agent::start`] does everything that can fail up front (one agent per
//! pin directory, the maps, the proxy, every attachment); [`Agent::run`] is
//! the event loop. Nothing here knows where the inventory comes from: the
//! lab, a snapshot file and a live cluster are all an [`InventorySource`].

pub mod api;
mod dns;
mod error;
pub mod events;
mod fqdn;
pub mod host;
mod instance;
pub mod inventory;
mod l7;
mod maps;
pub mod policy;
mod run;
mod socket;
pub mod store;

use std::path::{Path, PathBuf};

use cnpilot_bpf::Mode;

pub use cnpilot_learner::inventory::InventorySource;
pub use dns::DEFAULT_DNS_PROXY_PORT;
pub use error::{AgentError, Result};
pub use host::{host_mode_id, HostFirewall};
pub use inventory::{ns_id, OWN_NETNS};
pub use l7::DEFAULT_PROXY_PORT;
pub use policy::{Staged, Visibility};
pub use run::{Agent, Progress, RunOptions, Started, Stopped};

/// The agent's event ring buffer, in MiB, when not configured.
pub const DEFAULT_RING_MIB: u32 = 16;

/// How the agent runs on this node.
pub struct AgentConfig {
    /// Directory of CNP / CCNP YAML files; `None`: no policies (audit of
    /// everything, nothing selected).
    pub policies: Option<PathBuf>,
    /// Mode for every namespace; `None`: pinned modes stay, new namespaces
    /// start in audit.
    pub mode: Option<Mode>,
    /// bpffs directory of the pinned maps and links (one agent per pin dir).
    pub pin_dir: PathBuf,
    /// This node's name in the inventory: only its pods are attached.
    pub node_name: String,
    /// The node's network namespace (where pods' host-side interfaces and
    /// their /32 routes are); [`OWN_NETNS`] on a real node.
    pub node_netns: PathBuf,
    /// Flow store directory, if events become flow records.
    pub store: Option<PathBuf>,
    /// The transparent L7 proxy's port; 0 runs no proxy.
    pub proxy_port: u16,
    /// The transparent DNS proxy's port (UDP and TCP); 0 runs none (`rules.dns` is
    /// then allowed at L4, and `toFQDNs` learns no name).
    pub dns_proxy_port: u16,
    /// Seconds an answered address keeps its name at least, whatever the
    /// answer's TTL (Cilium's `--tofqdns-min-ttl`; 0 honours the TTL).
    pub fqdn_min_ttl: u32,
    /// Event ring buffer size in MiB (a power of two).
    pub ring_buffer_mib: u32,
    /// HTTP visibility without L7 rules.
    pub visibility: Visibility,
    /// The host firewall: the node's own devices, its own traffic judged
    /// by CCNPs with a `nodeSelector` (identity `host`).
    pub host_firewall: HostFirewall,
    /// The local API socket.
    pub socket: PathBuf,
    /// Namespaces a staged enforce has taken over; asked at start, on every
    /// reload and on inventory changes.
    pub staged: Option<Box<dyn StagedSource>>,
    /// What the agent tells its operator (attachments, detachments, pods
    /// waiting for a route, modes kept): the CLI prints them.
    pub notices: Box<dyn FnMut(Notice) + Send>,
}

/// Namespaces whose policies come from a staged enforce's proposal.
#[derive(Debug, Clone, Default)]
pub struct StagedSet {
    /// Each namespace with its proposal's directory.
    pub namespaces: Vec<Staged>,
    /// Namespaces whose mode a staged enforce owns (`--mode` leaves them).
    pub keep_mode: Vec<String>,
}

/// Where staged-enforce records are read from (the CLI's `enforce` state).
pub trait StagedSource: Send {
    /// The staged namespaces now.
    fn staged(&self) -> std::result::Result<StagedSet, Box<dyn std::error::Error + Send + Sync>>;
}

/// Something the operator should know, as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// A pod of this node has no route to an interface yet.
    Unrouted(String),
    /// A namespace's policies come from its staged enforce.
    StagedPolicies { namespace: String, dir: PathBuf },
    /// `--mode` was not applied to a namespace a staged enforce owns.
    KeepsMode {
        namespace: String,
        mode: String,
        asked: Mode,
    },
    /// Pods attached after an inventory change, `ms` after it was read.
    Attached { pods: Vec<String>, ms: f64 },
    /// Pods detached after an inventory change.
    Detached { pods: Vec<String> },
    /// The host firewall's devices, at start and when they change.
    HostDevices {
        attached: Vec<String>,
        detached: Vec<String>,
    },
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Unrouted(pod) => {
                write!(
                    f,
                    "{pod}: no route to an interface yet; attached when it has one"
                )
            }
            Notice::StagedPolicies { namespace, dir } => write!(
                f,
                "{namespace}: policies from its staged enforce ({})",
                dir.display()
            ),
            Notice::KeepsMode {
                namespace,
                mode,
                asked,
            } => write!(
                f,
                "{namespace}: keeps its mode ({mode}), not --mode {asked}: a staged enforce owns it"
            ),
            Notice::Attached { pods, ms } => write!(
                f,
                "attached {} ({ms:.1} ms after reading the change)",
                pods.join(", ")
            ),
            Notice::Detached { pods } => write!(f, "detached {}", pods.join(", ")),
            Notice::HostDevices { attached, detached } => {
                if !attached.is_empty() {
                    write!(f, "host firewall on {}", attached.join(", "))?;
                }
                if !detached.is_empty() {
                    let sep = if attached.is_empty() { "" } else { "; " };
                    write!(f, "{sep}host firewall off {}", detached.join(", "))?;
                }
                Ok(())
            }
        }
    }
}

/// Takes everything down: detaches from every interface, removes every pin
/// and the proxy's route in `node_netns` (enforcement stops).
pub fn down(pin_dir: &Path, node_netns: Option<&Path>) -> Result<()> {
    if let Some(node) = node_netns {
        l7::remove_proxy_route(node);
    }
    cnpilot_bpf::unpin_all(pin_dir)?;
    Ok(())
}

/// A power of two from 1 to 1024 MiB: a valid `ring_buffer_mib`.
pub fn parse_ring_mib(text: &str) -> std::result::Result<u32, String> {
    let mib: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number of MiB"))?;
    if !(1..=1024).contains(&mib) || !mib.is_power_of_two() {
        return Err(format!(
            "{mib} MiB: the ring buffer must be a power of two from 1 to 1024 MiB"
        ));
    }
    Ok(mib)
}
