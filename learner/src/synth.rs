//! Synthetic flow records for benchmarks and tests: a deterministic
//! cluster-shaped mix (namespaces, workloads, HTTP routes with ids, DNS, world
//! peers, some drops) from a seed.

use std::net::{IpAddr, Ipv4Addr};

use crate::identity::{IdentityAllocator, Labels};
use crate::inventory::{Inventory, InventorySnapshot, NamespaceInfo, NodeInfo, PodInfo};
use crate::record::{Direction, FlowRecord, L7Protocol, Peer, Verdict, L7};

/// Shape of the synthetic cluster.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub namespaces: u32,
    pub workloads_per_namespace: u32,
    pub nodes: u32,
    /// Unix ns of the first record.
    pub start_ns: i64,
    /// Time between consecutive records.
    pub step_ns: i64,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            namespaces: 20,
            workloads_per_namespace: 10,
            nodes: 3,
            // 2026-01-01T00:00:00Z
            start_ns: 1_767_225_600_000_000_000,
            step_ns: 1_000_000,
            seed: 0x5eed,
        }
    }
}

/// Generates records; `next_record` is cheap (no allocation beyond the
/// record's own strings).
pub struct SynthFlows {
    config: SynthConfig,
    state: u64,
    index: i64,
    peers: Vec<Peer>,
}

impl SynthFlows {
    pub fn new(config: SynthConfig) -> Self {
        let mut alloc = IdentityAllocator::new();
        let mut peers = Vec::new();
        for ns in 0..config.namespaces {
            for wl in 0..config.workloads_per_namespace {
                let namespace = format!("ns-{ns}");
                let workload = format!("wl-{wl}");
                let mut labels = Labels::new();
                labels.insert("app", workload.clone());
                labels.insert(crate::identity::NAMESPACE_LABEL, namespace.clone());
                let identity = alloc.allocate(&labels);
                let addr = Ipv4Addr::new(198, 18, ns as u8, wl as u8 + 10);
                peers.push(Peer {
                    identity,
                    namespace,
                    workload,
                    labels,
                    ip: Some(IpAddr::V4(addr)),
                });
            }
        }
        let state = config.seed | 1;
        Self {
            config,
            state,
            index: 0,
            peers,
        }
    }

    fn rand(&mut self) -> u64 {
        // xorshift64*: fast and deterministic; quality is irrelevant here.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn next_record(&mut self) -> FlowRecord {
        let r = self.rand();
        let n = self.peers.len() as u64;
        let src = self.peers[(r % n) as usize].clone();
        // Skewed destinations: most traffic goes to a few services.
        let dst_index = ((r >> 16) % n).min((r >> 40) % 16);
        let kind = (r >> 8) % 100;
        let ts = self.config.start_ns + self.index * self.config.step_ns;
        self.index += 1;
        let node = format!("node-{}", (r >> 24) % u64::from(self.config.nodes.max(1)));
        let mut record = FlowRecord {
            window_start_ns: ts,
            window_end_ns: ts,
            node,
            src,
            dst: self.peers[dst_index as usize].clone(),
            proto: 6,
            dst_port: 8080,
            direction: Direction::Egress,
            verdict: Verdict::Forwarded,
            reason: String::new(),
            l7: None,
            packets: 1 + (r >> 50) % 20,
            bytes: 60 + (r >> 33) % 4000,
            count: 1,
        };
        match kind {
            0..=49 => {
                let id = (r >> 20) % 100_000;
                let (method, path) = match (r >> 4) % 4 {
                    0 => ("GET", format!("/api/v1/charges/{id}")),
                    1 => ("POST", "/api/v1/charges".to_string()),
                    2 => ("GET", format!("/api/v1/users/{id}/orders")),
                    _ => ("GET", "/healthz".to_string()),
                };
                record.l7 = Some(L7 {
                    protocol: L7Protocol::Http,
                    method: Some(method.into()),
                    path: Some(path),
                    query: None,
                    host: None,
                    status: Some(200),
                    dns: None,
                });
            }
            50..=64 => {
                record.proto = 17;
                record.dst_port = 53;
                record.dst = self.peers[0].clone();
            }
            65..=74 => {
                record.dst = Peer {
                    identity: 2,
                    namespace: String::new(),
                    workload: "world".into(),
                    labels: Labels::reserved("world"),
                    ip: Some(IpAddr::V4(Ipv4Addr::new(198, 19, 0, ((r >> 30) % 8) as u8))),
                };
                record.dst_port = 443;
            }
            75..=79 => {
                record.verdict = Verdict::WouldDrop;
                record.reason = "default-deny".into();
                record.dst_port = 5432;
            }
            _ => record.dst_port = 9090,
        }
        record
    }
}

impl Iterator for SynthFlows {
    type Item = FlowRecord;
    fn next(&mut self) -> Option<FlowRecord> {
        Some(self.next_record())
    }
}

/// The cluster the ingest benchmarks resolve events against: 200 pods in 20
/// namespaces on one node, plus eight world addresses, with the identity the
/// datapath would put in each event (from the same inventory).
pub struct BenchCluster {
    pub node: String,
    pub inventory: Inventory,
    /// (address, identity); pods first, then the world addresses.
    pub peers: Vec<(Ipv4Addr, u32)>,
}

impl Default for BenchCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl BenchCluster {
    pub fn new() -> Self {
        let node = "node-0".to_string();
        let mut pods = Vec::new();
        let mut namespaces = Vec::new();
        for ns in 0..20u8 {
            namespaces.push(NamespaceInfo {
                name: format!("ns-{ns}"),
                labels: [("team".to_string(), format!("team-{}", ns % 4))].into(),
            });
            for wl in 0..10u8 {
                pods.push(PodInfo {
                    name: format!("wl-{wl}-7d9f8-{ns}{wl}"),
                    namespace: format!("ns-{ns}"),
                    node: node.clone(),
                    ips: vec![IpAddr::V4(Ipv4Addr::new(198, 18, ns, wl + 10))],
                    host_network: false,
                    labels: [
                        ("app".to_string(), format!("wl-{wl}")),
                        ("pod-template-hash".to_string(), "7d9f8".to_string()),
                        ("tier".to_string(), "backend".to_string()),
                    ]
                    .into(),
                    service_account: Some("default".into()),
                    workload: format!("wl-{wl}"),
                    phase: "Running".into(),
                    started_ns: Some(0),
                    finished_ns: None,
                    ports: Vec::new(),
                });
            }
        }
        let inventory = Inventory::from_snapshot(&InventorySnapshot {
            pods,
            namespaces,
            nodes: vec![NodeInfo {
                name: node.clone(),
                addresses: vec![IpAddr::V4(Ipv4Addr::new(198, 18, 255, 1))],
                labels: Default::default(),
            }],
        });
        let addresses = (0..20u8)
            .flat_map(|ns| (0..10u8).map(move |wl| Ipv4Addr::new(198, 18, ns, wl + 10)))
            .chain((0..8u8).map(|i| Ipv4Addr::new(198, 19, 0, i)));
        let peers = addresses
            .map(|ip| {
                let identity = inventory.resolve(IpAddr::V4(ip), 0, Some(&node)).identity;
                (ip, identity)
            })
            .collect();
        Self {
            node,
            inventory,
            peers,
        }
    }
}
