//! The identities a recommendation is made for, taken from the flow table
//! itself: every workload seen on either side of a flow. Selectors are
//! chosen against this set, and replay compiles policies against it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cnpilot_learner::aggregate::{FlowSummary, FlowTable};
use cnpilot_learner::identity::{is_cidr_identity, MIN_WORKLOAD_IDENTITY};
use cnpilot_learner::{Labels, ReservedIdentity};

use crate::compile::IdentityInput;
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
}

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

impl Universe {
    pub fn from_table(table: &FlowTable) -> Universe {
        let mut workloads = BTreeMap::new();
        for row in &table.rows {
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
        Universe { workloads }
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
