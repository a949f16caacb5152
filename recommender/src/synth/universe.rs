//! The identities a recommendation is made for, taken from the flow table
//! itself: every workload seen on either side of a flow, and the nodes
//! whose host (identity 1) was. Selectors are chosen against this set, and
//! replay compiles policies against it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use cnpilot_learner::aggregate::{FlowSummary, FlowTable};
use cnpilot_learner::identity::{is_cidr_identity, MIN_WORKLOAD_IDENTITY};
use cnpilot_learner::{Labels, ReservedIdentity};

use crate::compile::{FqdnInput, IdentityInput, NodeInput, FQDN_IDENTITY_BASE};
use crate::model::Cidr;

/// One workload identity (all replicas of a Deployment share it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub identity: u32,
    pub namespace: String,
    pub workload: String,
    pub labels: Labels,
}

impl Workload {
    /// `namespace/workload`, the name the review uses.
    pub fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.workload)
    }
}

/// Every workload of the table, by identity.
#[derive(Debug, Clone, Default)]
pub struct Universe {
    pub workloads: BTreeMap<u32, Workload>,
    /// The nodes that recorded a flow of their own host (`reserved:host`
    /// on either side).
    pub host_nodes: BTreeSet<String>,
    /// World addresses DNS answered for names during the recording, as
    /// the agent's DNS proxy would have put them in the ipcache: proofs
    /// compile with them, so a `toFQDNs` rule is judged on the addresses
    /// its names were given.
    pub fqdns: Vec<FqdnInput>,
}

/// The entity name of a node's own host (identity 1) on a flow.
pub const HOST: &str = "host";

/// What one side of a flow is, for policy purposes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRef {
    /// A cluster workload (a pod identity).
    Workload(u32),
    /// A reserved identity, by Cilium entity name (`world`, `host`, …).
    Entity(&'static str),
    /// An address outside the cluster (a world destination).
    Cidr(Cidr),
}

fn is_workload_identity(id: u32, namespace: &str) -> bool {
    id >= MIN_WORKLOAD_IDENTITY && !is_cidr_identity(id) && !namespace.is_empty()
}

impl PeerRef {
    /// Whether this end of a flow has policy of its own: a workload (its
    /// CNP) or the node's host (a host policy, CCNP with `nodeSelector`).
    /// Every other reserved identity and address is only ever a peer.
    pub fn is_subject(&self) -> bool {
        matches!(self, PeerRef::Workload(_)) || *self == PeerRef::Entity(HOST)
    }
}

impl Universe {
    pub fn from_table(table: &FlowTable) -> Universe {
        let mut workloads = BTreeMap::new();
        let mut host_nodes = BTreeSet::new();
        let host = ReservedIdentity::Host.number();
        for row in &table.rows {
            if row.src_identity == host || row.dst_identity == host {
                host_nodes.extend(row.nodes.iter().cloned());
            }
            for (id, ns, wl, labels) in [
                (
                    row.src_identity,
                    &row.src_namespace,
                    &row.src_workload,
                    &row.src_labels,
                ),
                (
                    row.dst_identity,
                    &row.dst_namespace,
                    &row.dst_workload,
                    &row.dst_labels,
                ),
            ] {
                if is_workload_identity(id, ns) {
                    workloads.entry(id).or_insert_with(|| Workload {
                        identity: id,
                        namespace: ns.clone(),
                        workload: wl.clone(),
                        labels: labels.clone(),
                    });
                }
            }
        }
        let mut names: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        for answer in &table.dns {
            if let std::net::IpAddr::V4(v4) = answer.ip {
                names
                    .entry(v4)
                    .or_default()
                    .insert(answer.name.to_ascii_lowercase());
            }
        }
        let fqdns = names
            .into_iter()
            .zip(FQDN_IDENTITY_BASE..)
            .map(|((addr, names), id)| FqdnInput {
                addr,
                id,
                names: names.into_iter().collect(),
            })
            .collect();
        Universe {
            workloads,
            host_nodes,
            fqdns,
        }
    }

    /// The node policies are compiled for, so that host policies
    /// (`nodeSelector`) have a subject. The table carries node names but
    /// no node labels: only a selector that needs no label (`{}`, or
    /// `reserved:host`) selects it, and the recommendation warns about
    /// current host policies whose selector needs one.
    pub fn node_input(&self) -> NodeInput {
        NodeInput {
            name: self.host_nodes.first().cloned().unwrap_or_default(),
            labels: BTreeMap::new(),
        }
    }

    /// The compiler's view of the universe (no addresses: replay resolves
    /// peers by identity, not by address).
    pub fn identity_inputs(&self) -> Vec<IdentityInput> {
        self.workloads
            .values()
            .map(|w| IdentityInput {
                id: w.identity,
                namespace: w.namespace.clone(),
                labels: w.labels.iter().map(|(k, v)| (k.into(), v.into())).collect(),
                named_ports: BTreeMap::new(),
                addrs: Vec::new(),
            })
            .collect()
    }

    pub fn name_of(&self, peer: &PeerRef) -> String {
        match peer {
            PeerRef::Workload(id) => self
                .workloads
                .get(id)
                .map_or_else(|| format!("identity-{id}"), Workload::name),
            PeerRef::Entity(e) => (*e).to_string(),
            PeerRef::Cidr(c) => c.to_string(),
        }
    }

    /// The source of a flow row.
    pub fn source(&self, row: &FlowSummary) -> PeerRef {
        if self.workloads.contains_key(&row.src_identity) {
            return PeerRef::Workload(row.src_identity);
        }
        // A source outside the cluster: the table keeps no source address
        // (flows are keyed by destination), so it can only be `world`.
        if is_cidr_identity(row.src_identity) {
            return PeerRef::Entity("world");
        }
        PeerRef::Entity(
            ReservedIdentity::from_number(row.src_identity).map_or("world", ReservedIdentity::name),
        )
    }

    /// The destination of a flow row.
    pub fn destination(&self, row: &FlowSummary) -> PeerRef {
        if self.workloads.contains_key(&row.dst_identity) {
            return PeerRef::Workload(row.dst_identity);
        }
        if let Ok(cidr) = row.dst_peer.parse::<Cidr>() {
            if row.dst_peer.contains('/') {
                return PeerRef::Cidr(cidr);
            }
        }
        if let Some(r) = ReservedIdentity::from_name(&row.dst_peer) {
            return PeerRef::Entity(r.name());
        }
        PeerRef::Entity(
            ReservedIdentity::from_number(row.dst_identity).map_or("world", ReservedIdentity::name),
        )
    }
}

/// The identity a peer has in a compiled policy: workloads keep theirs,
/// entities are Cilium's reserved numbers, addresses go through the
/// compiled ipcache (CIDR identities depend on the policies compiled).
pub fn peer_identity(peer: &PeerRef, compiled: &crate::CompiledPolicy) -> u32 {
    match peer {
        PeerRef::Workload(id) => *id,
        PeerRef::Entity(e) => {
            ReservedIdentity::from_name(e).map_or(ReservedIdentity::World.number(), |r| r.number())
        }
        PeerRef::Cidr(c) => match c.as_v4() {
            Some((net, _)) => compiled.identity_of_addr(Ipv4Addr::from(net)),
            None => ReservedIdentity::World.number(),
        },
    }
}
