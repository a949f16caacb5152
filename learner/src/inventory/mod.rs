//! What runs where: pods, namespaces and nodes, from a snapshot file, the
//! lab or a live cluster, turned into an `Inventory` that resolves an IP at
//! a given time to an identity.

mod convert;
pub mod live;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;

use foldhash::fast::FixedState;
use thiserror::Error;

use crate::identity::{cidr_labels, IdentityAllocator, Labels, ReservedIdentity};

pub use convert::{namespace_info, node_info, pod_info};
pub use live::KubeSource;
pub use snapshot::SnapshotFile;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a kubectl JSON list: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: item {index} ({kind}): {reason}")]
    Item {
        path: PathBuf,
        index: usize,
        kind: String,
        reason: String,
    },
    #[error("kubernetes API: {0}")]
    Kube(String),
}

/// A pod as far as identities care.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub labels: BTreeMap<String, String>,
    pub service_account: Option<String>,
    /// Owning workload (Deployment name for a ReplicaSet's pod, …).
    pub workload: String,
    /// Pending, Running, Succeeded, Failed, Unknown.
    pub phase: String,
    /// Unix ns: when the pod started (or was created).
    pub started_ns: Option<i64>,
    /// Unix ns: when its last container finished, for terminated pods.
    pub finished_ns: Option<i64>,
    /// The containers' declared ports (what HTTP visibility's `auto` reads).
    pub ports: Vec<ContainerPort>,
}

/// One `containers[].ports[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP` (Kubernetes' default is TCP).
    pub protocol: String,
    pub name: Option<String>,
}

impl ContainerPort {
    /// Declared HTTP: a port named `http` or `http-…` (the naming
    /// convention Istio and the Kubernetes docs use; containerPorts have no
    /// appProtocol); TCP only. `https`/`h2c` are not HTTP/1 in the clear.
    pub fn is_http(&self) -> bool {
        let named = self
            .name
            .as_deref()
            .is_some_and(|n| n == "http" || n.starts_with("http-"));
        self.protocol == "TCP" && named
    }
}

impl PodInfo {
    pub fn is_terminated(&self) -> bool {
        self.phase == "Succeeded" || self.phase == "Failed"
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// InternalIP and ExternalIP addresses.
    pub addresses: Vec<IpAddr>,
    /// What a CCNP's `nodeSelector` matches.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// The raw material of an `Inventory`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InventorySnapshot {
    pub pods: Vec<PodInfo>,
    pub namespaces: Vec<NamespaceInfo>,
    pub nodes: Vec<NodeInfo>,
}

/// Anything that can say what runs in the cluster now.
pub trait InventorySource {
    /// Short description for logs and errors (a path, "cluster").
    fn describe(&self) -> String;
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError>;
}

/// A source chosen at run time (`--inventory lab|kube|FILE`) is a source.
impl<S: InventorySource + ?Sized> InventorySource for Box<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn snapshot(&self) -> Result<InventorySnapshot, InventoryError> {
        (**self).snapshot()
    }
}

/// The identity side of a resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub identity: u32,
    pub namespace: String,
    pub workload: String,
    pub labels: Labels,
}

impl Resolved {
    fn reserved(r: ReservedIdentity) -> Self {
        Self {
            identity: r.number(),
            namespace: String::new(),
            workload: r.name().into(),
            labels: r.labels(),
        }
    }
}

#[derive(Debug, Clone)]
struct PodEntry {
    resolved: Resolved,
    started_ns: Option<i64>,
    finished_ns: Option<i64>,
    terminated: bool,
}

/// Resolves addresses to identities. Built once per inventory change; cheap
/// to query.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    // A fixed-seed fast hash: these maps are probed twice per datapath event
    // and their keys come from our own inventory, not from an adversary.
    pods_by_ip: HashMap<IpAddr, Vec<PodEntry>, FixedState>,
    node_by_ip: HashMap<IpAddr, String, FixedState>,
    /// Workload identities: the datapath can name a peer by identity alone
    /// (the L7 proxy's upstream leg carries the client's identity in its
    /// mark while its address is the node's).
    workload_by_identity: HashMap<u32, Resolved, FixedState>,
    allocator: IdentityAllocator,
}

impl Inventory {
    pub fn from_source(source: &dyn InventorySource) -> Result<Self, InventoryError> {
        Ok(Self::from_snapshot(&source.snapshot()?))
    }

    pub fn from_snapshot(snapshot: &InventorySnapshot) -> Self {
        let ns_labels: HashMap<&str, &BTreeMap<String, String>> = snapshot
            .namespaces
            .iter()
            .map(|ns| (ns.name.as_str(), &ns.labels))
            .collect();
        let empty = BTreeMap::new();
        let mut pods = Vec::new();
        for pod in &snapshot.pods {
            // hostNetwork pods share the node's address and identity.
            if pod.host_network {
                continue;
            }
            let labels = Labels::identity_of_pod(
                &pod.labels,
                &pod.namespace,
                pod.service_account.as_deref(),
                ns_labels
                    .get(pod.namespace.as_str())
                    .copied()
                    .unwrap_or(&empty),
            );
            pods.push((pod, labels));
        }
        let mut allocator = IdentityAllocator::new();
        allocator.allocate_all(pods.iter().map(|(_, labels)| labels));
        // Replicas share one label set (one allocation): records then carry
        // clones of it, which the flow store interns by address.
        let mut shared: HashMap<Labels, Labels> = HashMap::new();
        let mut pods_by_ip: HashMap<IpAddr, Vec<PodEntry>, FixedState> = HashMap::default();
        for (pod, labels) in pods {
            let labels = shared.entry(labels.clone()).or_insert(labels).clone();
            let identity = allocator.allocate(&labels);
            for ip in &pod.ips {
                pods_by_ip.entry(*ip).or_default().push(PodEntry {
                    resolved: Resolved {
                        identity,
                        namespace: pod.namespace.clone(),
                        workload: pod.workload.clone(),
                        labels: labels.clone(),
                    },
                    started_ns: pod.started_ns,
                    finished_ns: pod.finished_ns,
                    terminated: pod.is_terminated(),
                });
            }
        }
        let workload_by_identity = pods_by_ip
            .values()
            .flatten()
            .map(|e| (e.resolved.identity, e.resolved.clone()))
            .collect();
        let node_by_ip = snapshot
            .nodes
            .iter()
            .flat_map(|n| n.addresses.iter().map(move |ip| (*ip, n.name.clone())))
            .collect();
        Self {
            pods_by_ip,
            node_by_ip,
            workload_by_identity,
            allocator,
        }
    }

    pub fn allocator(&self) -> &IdentityAllocator {
        &self.allocator
    }

    /// The workload a numeric identity stands for, when it is a pod identity.
    pub fn workload_of_identity(&self, identity: u32) -> Option<&Resolved> {
        self.workload_by_identity.get(&identity)
    }

    /// The identity of `ip` at `at_ns` (Unix ns), seen from `observing_node`.
    ///
    /// A pod IP resolves to the pod that held it at that time: a pod whose
    /// lifetime covers `at_ns`, else the running pod, else the most recent
    /// one. A node address is `host` on the observing node and `remote-node`
    /// elsewhere (also when the observer is unknown). Anything else is world.
    pub fn resolve(&self, ip: IpAddr, at_ns: i64, observing_node: Option<&str>) -> Resolved {
        if let Some(entries) = self.pods_by_ip.get(&ip) {
            if let Some(entry) = pick_pod(entries, at_ns) {
                return entry.resolved.clone();
            }
        }
        if let Some(node) = self.node_by_ip.get(&ip) {
            let mut r = if Some(node.as_str()) == observing_node {
                Resolved::reserved(ReservedIdentity::Host)
            } else {
                Resolved::reserved(ReservedIdentity::RemoteNode)
            };
            r.workload = node.clone();
            return r;
        }
        let mut world = Resolved::reserved(ReservedIdentity::World);
        world.labels = cidr_labels(ip);
        world
    }
}

fn pick_pod(entries: &[PodEntry], at_ns: i64) -> Option<&PodEntry> {
    let covers = |e: &&PodEntry| {
        e.started_ns.is_some_and(|s| s <= at_ns)
            && e.finished_ns.is_none_or(|f| at_ns < f)
            && !(e.terminated && e.finished_ns.is_none())
    };
    entries
        .iter()
        .filter(covers)
        .max_by_key(|e| e.started_ns)
        .or_else(|| entries.iter().find(|e| !e.terminated))
        .or_else(|| entries.iter().max_by_key(|e| e.started_ns))
}
