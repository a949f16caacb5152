//! Inventory from a kubectl snapshot, and from a (mocked) live cluster.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use cnpilot_bpf::maps::FlowEvent;
use cnpilot_learner::inventory::{snapshot, InventorySource, KubeSource, SnapshotFile};
use cnpilot_learner::{FlowRecord, Inventory, Verdict};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/inventory/cluster.json"
    ))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ns(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

fn inventory() -> Inventory {
    Inventory::from_source(&SnapshotFile::new(fixture())).unwrap()
}

#[test]
fn snapshot_file_lists_pods_namespaces_nodes() {
    let snap = SnapshotFile::new(fixture()).snapshot().unwrap();
    assert_eq!(snap.pods.len(), 9);
    assert_eq!(snap.namespaces.len(), 5);
    assert_eq!(snap.nodes.len(), 2);
    let agent = snap
        .pods
        .iter()
        .find(|p| p.name.starts_with("node-agent"))
        .unwrap();
    assert!(agent.host_network);
    assert_eq!(agent.workload, "node-agent");
    let job = snap
        .pods
        .iter()
        .find(|p| p.name.starts_with("report-"))
        .unwrap();
    assert!(job.is_terminated());
    assert_eq!(job.finished_ns, Some(ns("2026-01-02T08:30:00Z")));
    assert_eq!(
        snap.nodes[1].addresses,
        vec![ip("198.18.0.2"), ip("198.19.200.2")]
    );
}

#[test]
fn replicas_share_identity_and_labels_drop_per_pod_keys() {
    let inv = inventory();
    let t = ns("2026-01-02T10:00:00Z");
    let a = inv.resolve(ip("198.18.2.20"), t, Some("node-a"));
    let b = inv.resolve(ip("198.18.2.21"), t, Some("node-a"));
    assert_eq!(a, b);
    assert_eq!(a.workload, "payments-api");
    assert_eq!(a.namespace, "payments");
    assert!((256..=65535).contains(&a.identity));
    assert_eq!(
        a.labels.to_canonical(),
        "app=payments-api;io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=payments;\
io.cilium.k8s.namespace.labels.team=pay;io.cilium.k8s.policy.serviceaccount=payments-api;\
io.kubernetes.pod.namespace=payments"
    );
    let prom = inv.resolve(ip("198.18.3.9"), t, None);
    assert_eq!(prom.workload, "prometheus");
    assert_eq!(prom.labels.get("statefulset.kubernetes.io/pod-name"), None);
    // Same file, same numbers.
    assert_eq!(
        inventory().resolve(ip("198.18.2.20"), t, None).identity,
        a.identity
    );
}

#[test]
fn a_reused_ip_resolves_to_the_pod_that_held_it_then() {
    let inv = inventory();
    let during_job = inv.resolve(ip("198.18.1.50"), ns("2026-01-02T08:10:00Z"), None);
    assert_eq!(during_job.workload, "report-28391040");
    assert_eq!(
        during_job.labels.get("job-name"),
        None,
        "per-pod label dropped"
    );
    let after = inv.resolve(ip("198.18.1.50"), ns("2026-01-02T09:00:00Z"), None);
    assert_eq!(after.workload, "analytics");
    assert_ne!(during_job.identity, after.identity);
}

#[test]
fn node_addresses_are_host_or_remote_node_and_the_rest_world() {
    let inv = inventory();
    let t = ns("2026-01-02T10:00:00Z");
    // hostNetwork pod's address is the node's: host, not a pod identity.
    assert_eq!(inv.resolve(ip("198.18.0.1"), t, Some("node-a")).identity, 1);
    assert_eq!(inv.resolve(ip("198.18.0.1"), t, Some("node-b")).identity, 6);
    assert_eq!(
        inv.resolve(ip("198.19.200.2"), t, Some("node-a")).identity,
        6
    );
    let world = inv.resolve(ip("198.19.0.7"), t, Some("node-a"));
    assert_eq!(world.identity, 2);
    assert_eq!(
        world.labels.to_canonical(),
        "cidr:198.19.0.7/32;reserved:world"
    );
}

#[test]
fn datapath_events_become_records_with_labels_resolved_now() {
    let inv = inventory();
    let event = FlowEvent {
        ts_ns: 5,
        saddr: u32::from(std::net::Ipv4Addr::new(198, 18, 1, 10)).to_be(),
        daddr: u32::from(std::net::Ipv4Addr::new(198, 18, 2, 20)).to_be(),
        src_identity: 0,
        dst_identity: 0,
        sport: 40000,
        dport: 8080,
        proto: 6,
        direction: 1,
        verdict: cnpilot_bpf::maps::verdict::WOULD_DROP,
        reason: cnpilot_bpf::maps::reason::DEFAULT_DENY,
        ..Default::default()
    };
    let record = FlowRecord::from_event(&event, &inv, "node-a", ns("2026-01-02T10:00:00Z"));
    assert_eq!(record.src.workload, "frontend-app");
    assert_eq!(record.dst.workload, "payments-api");
    assert_eq!(record.verdict, Verdict::WouldDrop);
    assert_eq!(record.reason, "default-deny");
    assert_eq!(record.window_start_ns, ns("2026-01-02T10:00:00Z") + 5);
}

#[test]
fn proxy_leg_is_named_by_the_identity_in_its_mark_not_the_node_address() {
    let inv = inventory();
    let frontend = inv
        .resolve(
            ip("198.18.1.10"),
            ns("2026-01-02T10:00:00Z"),
            Some("node-a"),
        )
        .identity;
    let node_a = inv.resolve(ip("198.18.0.1"), ns("2026-01-02T10:00:00Z"), Some("node-a"));
    assert_ne!(
        node_a.identity, frontend,
        "fixture: node-a must not be a pod"
    );
    // The L7 proxy's upstream connection leaves from the node's address and
    // carries the client's identity in its mark.
    let event = FlowEvent {
        saddr: u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1)).to_be(),
        daddr: u32::from(std::net::Ipv4Addr::new(198, 18, 2, 20)).to_be(),
        src_identity: frontend,
        dport: 8080,
        proto: 6,
        ..Default::default()
    };
    let record = FlowRecord::from_event(&event, &inv, "node-a", 0);
    assert_eq!(record.src.identity, frontend);
    assert_eq!(record.src.workload, "frontend-app");
    assert_eq!(record.src.namespace, "web");
}

#[test]
fn bad_snapshot_files_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        "{\"items\": [\n  {\"kind\": \"Pod\", \"metadata\": 3}\n]}",
    )
    .unwrap();
    let err = SnapshotFile::new(&path).snapshot().unwrap_err().to_string();
    assert!(
        err.contains("bad.json") && err.contains("item 0 (Pod)"),
        "{err}"
    );
    let err = snapshot::parse_list(&path, "{\n  \"items\": [,]}")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2"), "{err}");
    let err = snapshot::parse_list(&path, "[]").unwrap_err().to_string();
    assert!(err.contains("items"), "{err}");
}

/// kube's documented mock pattern: a tower-test service answers the
/// client's requests as the API server would.
#[tokio::test]
async fn live_source_reflects_pods_namespaces_nodes() {
    let (mock_service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(mock_service, "default");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
    let items = list["items"].as_array().unwrap().clone();
    let of_kind = move |kind: &str| -> Vec<Value> {
        items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect()
    };
    let server = tokio::spawn(async move {
        let mut watches = Vec::new();
        let mut lists = 0;
        while let Some((request, send)) = handle.next_request().await {
            let uri = request.uri().to_string();
            if uri.contains("watch=true") {
                // Hold the watch open: nothing changes.
                watches.push(send);
                continue;
            }
            let kind = if uri.starts_with("/api/v1/pods") {
                "Pod"
            } else if uri.starts_with("/api/v1/namespaces") {
                "Namespace"
            } else if uri.starts_with("/api/v1/nodes") {
                "Node"
            } else {
                panic!("unexpected request {uri}");
            };
            let body = json!({
                "kind": format!("{kind}List"),
                "apiVersion": "v1",
                "metadata": {"resourceVersion": "100"},
                "items": of_kind(kind),
            });
            lists += 1;
            send.send_response(Response::new(Body::from(
                serde_json::to_vec(&body).unwrap(),
            )));
            if lists > 10 {
                break;
            }
        }
    });
    let source = KubeSource::start(client);
    tokio::time::timeout(Duration::from_secs(10), source.wait_ready())
        .await
        .unwrap()
        .unwrap();
    let snap = source.snapshot().unwrap();
    assert_eq!(
        (snap.pods.len(), snap.namespaces.len(), snap.nodes.len()),
        (9, 5, 2)
    );
    let from_file = SnapshotFile::new(fixture()).snapshot().unwrap();
    let inv_live = Inventory::from_snapshot(&snap);
    let inv_file = Inventory::from_snapshot(&from_file);
    let t = ns("2026-01-02T10:00:00Z");
    for addr in [
        "198.18.2.20",
        "198.18.1.10",
        "198.18.0.53",
        "198.18.0.1",
        "198.19.0.1",
    ] {
        assert_eq!(
            inv_live.resolve(ip(addr), t, Some("node-a")),
            inv_file.resolve(ip(addr), t, Some("node-a")),
            "{addr}"
        );
    }
    drop(source);
    server.abort();
}
