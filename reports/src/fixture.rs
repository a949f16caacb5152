//! The article's cluster as observed traffic, for tests and examples: the
//! same workloads and flows as the lab's seed scenario, written as flow
//! records (one record per flow, `count` connections or requests), with the
//! would-drops the seed policies produce.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use cnpilot_learner::identity::{IdentityAllocator, Labels, NAMESPACE_LABEL};
use cnpilot_learner::record::{Direction, FlowRecord, L7Protocol, Peer, Verdict, L7};
use cnpilot_learner::store::StoreError;
use cnpilot_learner::FlowStore;

/// 2026-01-02T10:00:00Z.
pub const START_NS: i64 = 1_767_348_000_000_000_000;

fn labels(namespace: &str, key: &str, value: &str) -> Labels {
    let mut l = Labels::new();
    l.insert(key, value);
    l.insert(NAMESPACE_LABEL, namespace);
    l
}

/// `(namespace, workload, label key)` of every seed workload.
const WORKLOADS: &[(&str, &str, &str)] = &[
    ("tenant-a", "app", "app"),
    ("tenant-a", "worker", "app"),
    ("tenant-b", "app", "app"),
    ("tenant-b", "worker", "app"),
    ("monitoring", "prometheus", "app"),
    ("web", "frontend-app", "app"),
    ("data", "analytics-service", "app"),
    ("ops", "finance-tool", "app"),
    ("payments", "payments-api", "app"),
    ("kube-system", "kube-dns", "k8s-app"),
];

fn peer(alloc: &mut IdentityAllocator, name: &str) -> Peer {
    let (ns, wl) = name.split_once('/').unwrap_or(("", name));
    if ns.is_empty() {
        // A world address.
        let ip: Ipv4Addr = wl.parse().unwrap_or(Ipv4Addr::new(198, 19, 0, 7));
        return Peer {
            identity: 2,
            namespace: String::new(),
            workload: "world".into(),
            labels: Labels::reserved("world"),
            ip: Some(IpAddr::V4(ip)),
        };
    }
    let key = WORKLOADS
        .iter()
        .find(|(n, w, _)| *n == ns && *w == wl)
        .map_or("app", |(_, _, k)| k);
    let labels = labels(ns, key, wl);
    Peer {
        identity: alloc.allocate(&labels),
        namespace: ns.into(),
        workload: wl.into(),
        labels,
        ip: None,
    }
}

/// One seed flow: source, destination (`NS/WORKLOAD` or a world IPv4),
/// protocol, port, HTTP method and path, connections, verdict.
type Spec = (
    &'static str,
    &'static str,
    u8,
    u16,
    Option<(&'static str, &'static str)>,
    u64,
    Verdict,
);

const FLOWS: &[Spec] = &[
    (
        "tenant-a/worker",
        "tenant-a/app",
        6,
        8080,
        None,
        30,
        Verdict::Forwarded,
    ),
    (
        "tenant-a/worker",
        "monitoring/prometheus",
        6,
        9090,
        None,
        6,
        Verdict::WouldDrop,
    ),
    (
        "tenant-a/worker",
        "tenant-b/app",
        6,
        8080,
        None,
        4,
        Verdict::WouldDrop,
    ),
    (
        "tenant-b/worker",
        "tenant-b/app",
        6,
        8080,
        None,
        20,
        Verdict::Forwarded,
    ),
    (
        "monitoring/prometheus",
        "tenant-a/app",
        6,
        9090,
        None,
        10,
        Verdict::WouldDrop,
    ),
    (
        "web/frontend-app",
        "payments/payments-api",
        6,
        8080,
        Some(("POST", "/api/v1/charges")),
        12,
        Verdict::Forwarded,
    ),
    (
        "web/frontend-app",
        "payments/payments-api",
        6,
        8080,
        Some(("GET", "/api/v1/charges")),
        8,
        Verdict::Forwarded,
    ),
    (
        "data/analytics-service",
        "payments/payments-api",
        6,
        8080,
        Some(("GET", "/api/v1/charges")),
        5,
        Verdict::Forwarded,
    ),
    (
        "ops/finance-tool",
        "payments/payments-api",
        6,
        8080,
        Some(("POST", "/api/v1/refunds")),
        2,
        Verdict::Forwarded,
    ),
    (
        "web/frontend-app",
        "kube-system/kube-dns",
        17,
        53,
        None,
        20,
        Verdict::WouldDrop,
    ),
    (
        "web/frontend-app",
        "198.19.0.7",
        6,
        443,
        None,
        4,
        Verdict::WouldDrop,
    ),
];

/// The seed flows as records.
pub fn seed_records() -> Vec<FlowRecord> {
    let mut alloc = IdentityAllocator::new();
    FLOWS
        .iter()
        .enumerate()
        .map(|(i, &(src, dst, proto, port, http, count, verdict))| {
            let start = START_NS + i as i64 * 60_000_000_000;
            FlowRecord {
                window_start_ns: start,
                window_end_ns: start + 3_600_000_000_000,
                node: "cnp-node".into(),
                src: peer(&mut alloc, src),
                dst: peer(&mut alloc, dst),
                proto,
                dst_port: port,
                direction: Direction::Egress,
                verdict,
                reason: if verdict == Verdict::WouldDrop {
                    "policy-denied".into()
                } else {
                    String::new()
                },
                l7: http.map(|(method, path)| L7 {
                    protocol: L7Protocol::Http,
                    method: Some(method.into()),
                    path: Some(path.into()),
                    query: None,
                    host: None,
                    status: Some(200),
                    dns: None,
                }),
                packets: count * 10,
                bytes: count * 1000,
                count,
            }
        })
        .collect()
}

/// Write the seed flows into a flow store at `dir`.
pub fn write_seed_store(dir: &Path) -> Result<(), StoreError> {
    let mut store = FlowStore::open(dir)?;
    store.append(&seed_records())?;
    store.close()
}
