//! The lab's state: what `cnpilot lab up` built, for `lab down`, `lab exec`,
//! `lab traffic`, `lab status` and the agent.
//!
//! # For the agent (and anything else that attaches to the lab)
//!
//! ```ignore
//! let lab = crate::lab::state::LabState::load()?;   // $CNPILOT_LAB_DIR or /run/cnpilot/lab
//! // The node: a network namespace that routes (no bridge, one /32 per pod).
//! lab.node.netns;            // "cnp-node": attach tc programs inside this netns
//! lab.node.ip;               // 198.18.255.1: the node (host identity); on the node's `lo`
//! lab.node.uplink;           // "cnpup0": the node's link to the world (host firewall)
//! lab.node.uplink_ifindex;   // its ifindex inside the node netns
//! lab.remote_nodes;          // nodes 2.. when the scenario asks (`nodes: 2`): netns
//!                            // "cnp-node2", IP 198.18.255.2 (remote-node), link "cnpn2"
//!                            // in cnp-node <-> "cnpn1" in cnp-node2
//! for pod in &lab.pods {
//!     pod.namespace; pod.workload; pod.name; pod.labels;  // k8s metadata (no io.cilium.* labels)
//!     pod.node;              // node name = its netns ("cnp-node" unless on a remote node)
//!     pod.ip;                // 198.18.<ns>.<n>, or its node's IP when host_network
//!     pod.netns;             // "cnp-<ns>-<workload>-<i>" (its node's netns when host_network)
//!     pod.host_veth;         // Some("cnpv1a2b3c4d") in pod.node's netns; None when host_network
//!     pod.host_ifindex;      // Some(ifindex of host_veth inside pod.node's netns)
//!     pod.pod_ifindex;       // Some(ifindex of eth0 inside the pod netns)
//!     pod.host_network; pod.server_pid; pod.servers;
//! }
//! lab.namespaces;            // names + labels (for namespace-label selectors)
//! lab.world;                 // the world netns, 198.19.0.0/16 addresses
//! lab.dns_ip;                // kube-dns' pod IP, if the scenario has a DNS responder
//! ```
//!
//! The same data is on disk as `state.json` in the lab directory (stable
//! field names, `version` bumps on incompatible changes), and as
//! `inventory.json`, shaped like `kubectl get pods,namespaces,nodes -A -o json`.
//! Tc ingress on `host_veth` is the pod's egress; tc egress there is its ingress.
//! Everything's names start with `<prefix>` (`cnp` unless `CNPILOT_LAB_PREFIX`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::scenario::{Protocol, Scenario, ServerKind};

pub const STATE_VERSION: u32 = 1;
pub const DEFAULT_DIR: &str = "/run/cnpilot/lab";
pub const DEFAULT_PREFIX: &str = "cnp";
pub const DIR_ENV: &str = "CNPILOT_LAB_DIR";
pub const PREFIX_ENV: &str = "CNPILOT_LAB_PREFIX";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no lab is up (no {0}); run `cnpilot lab up`")]
    NotUp(PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a lab state file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has state version {found}, this cnpilot reads version {STATE_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no pod {0} in the lab")]
    NoPod(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    pub version: u32,
    pub prefix: String,
    /// Unix seconds when `lab up` finished.
    pub created_unix: u64,
    pub scenario: Scenario,
    pub node: NodeState,
    /// Nodes 2.. (empty unless the scenario has `nodes: N`), linked to `node`.
    #[serde(default)]
    pub remote_nodes: Vec<RemoteNodeState>,
    pub world: WorldState,
    pub dns_ip: Option<Ipv4Addr>,
    pub namespaces: Vec<NamespaceState>,
    pub pods: Vec<PodState>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// Also the Kubernetes node name in the inventory.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub uplink: String,
    pub uplink_ifindex: Option<u32>,
}

/// Another node: its own netns and IP; pods on it have their veths there.
/// Traffic between it and `node` crosses `node_link` (in the node netns) /
/// `link` (in this node's netns), like a tunnel between two Cilium nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemoteNodeState {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    pub link: String,
    pub link_ifindex: Option<u32>,
    pub node_link: String,
    pub node_link_ifindex: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorldState {
    pub netns: String,
    pub addresses: Vec<Ipv4Addr>,
    pub server_pid: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceState {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodState {
    pub namespace: String,
    pub workload: String,
    /// The Kubernetes pod name (`payments-api-7d9f8c6b5d-x2k4q`).
    pub name: String,
    pub replica: u32,
    /// The Kubernetes node name, which is also that node's netns name.
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub host_veth: Option<String>,
    pub host_ifindex: Option<u32>,
    pub pod_ifindex: Option<u32>,
    pub host_network: bool,
    pub server_pid: Option<u32>,
    pub servers: Vec<ServerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerState {
    pub port: u16,
    pub protocol: Protocol,
    pub kind: ServerKind,
}

/// Where a lab keeps its files: `$CNPILOT_LAB_DIR` or `/run/cnpilot/lab`.
// The agent's API (see the module docs); the lab's commands take `--lab-dir`.
#[allow(dead_code)]
pub fn lab_dir() -> PathBuf {
    std::env::var_os(DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn inventory_path(dir: &Path) -> PathBuf {
    dir.join("inventory.json")
}

impl LabState {
    /// The lab that is up, from `$CNPILOT_LAB_DIR` (default `/run/cnpilot/lab`).
    #[allow(dead_code)] // the agent's entry point
    pub fn load() -> Result<LabState, StateError> {
        LabState::load_from(&lab_dir())
    }

    pub fn load_from(dir: &Path) -> Result<LabState, StateError> {
        let path = state_path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotUp(path))
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let version = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("version").and_then(|v| v.as_u64()));
        if let Some(found) = version.filter(|v| *v != u64::from(STATE_VERSION)) {
            return Err(StateError::Version {
                path,
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        serde_json::from_str(&text).map_err(|source| StateError::Parse { path, source })
    }

    /// Written atomically (temp file + rename): readers never see half a file.
    pub fn save_to(&self, dir: &Path) -> Result<(), StateError> {
        let json = serde_json::to_string_pretty(self).map_err(|source| StateError::Parse {
            path: state_path(dir),
            source,
        })?;
        write_atomic(&state_path(dir), json.as_bytes())
    }

    /// `NS/WORKLOAD` and replica index, as `lab exec` names a pod.
    pub fn pod(
        &self,
        namespace: &str,
        workload: &str,
        replica: u32,
    ) -> Result<&PodState, StateError> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.workload == workload && p.replica == replica)
            .ok_or_else(|| StateError::NoPod(format!("{namespace}/{workload} (replica {replica})")))
    }

    /// The pod that owns an IP (pods, not the node: a hostNetwork pod shares the node IP).
    #[allow(dead_code)] // for the agent
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&PodState> {
        self.pods.iter().find(|p| p.ip == ip && !p.host_network)
    }

    /// Pod IPs of a workload (what the DNS responder answers for its name).
    pub fn workload_ips(&self, namespace: &str, workload: &str) -> Vec<Ipv4Addr> {
        let mut ips: Vec<Ipv4Addr> = self
            .pods
            .iter()
            .filter(|p| p.namespace == namespace && p.workload == workload)
            .map(|p| p.ip)
            .collect();
        ips.dedup();
        ips
    }

    /// Every netns this lab made (pods, world, nodes), node last.
    pub fn netns_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .map(|p| p.netns.clone())
            .collect();
        names.push(self.world.netns.clone());
        names.extend(self.remote_nodes.iter().map(|n| n.netns.clone()));
        names.push(self.node.netns.clone());
        names
    }

    pub fn server_pids(&self) -> Vec<u32> {
        self.pods
            .iter()
            .filter_map(|p| p.server_pid)
            .chain(self.world.server_pid)
            .collect()
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|source| StateError::Write {
        path: path.to_path_buf(),
        source,
    })
}
