//! Hubble import against the shared real samples and our own fixtures.

use std::io::Write;
use std::path::PathBuf;

use cnpilot_learner::hubble::{self, Input};
use cnpilot_learner::record::DnsAnswer;
use cnpilot_learner::store::{self, FlowStore};
use cnpilot_learner::{Direction, L7Protocol, Verdict};

fn shared(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hubble/"
    ))
    .join(name)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hubble/"
    ))
    .join(name)
}

#[test]
fn jsonpb_sample_counts_connections_not_packets() {
    let (records, summary) = hubble::read_file(&shared("observe-jsonpb.jsonl")).unwrap();
    assert_eq!(summary.lines, 23);
    assert_eq!(summary.records + summary.skipped_total(), 23);
    // Replies (is_reply / deprecated reply / SYN-ACK / L7 responses) are
    // skipped, except the 2 DNS responses: their answers are records.
    assert_eq!(
        summary.skipped.get("reply packet"),
        Some(&7),
        "{:?}",
        summary.skipped
    );
    // The 3 DNS requests, 3 HTTP scrapes, 2 HTTP requests with uuid, the
    // audit SYN and the host SYN are connections; the rest mid-stream.
    assert_eq!(summary.connections, 10);

    let dns: Vec<_> = records
        .iter()
        .filter(|r| r.l7.as_ref().is_some_and(|l| l.protocol == L7Protocol::Dns))
        .collect();
    assert_eq!(dns.len(), 5);
    assert_eq!(dns[0].dst.workload, "kube-dns");
    assert_eq!(dns[0].dst_port, 53);
    assert_eq!(dns[0].l7.as_ref().unwrap().method.as_deref(), Some("A"));
    assert_eq!(
        dns[0].l7.as_ref().unwrap().dns,
        None,
        "a query has no answer"
    );
    // The real NXDOMAIN responses (lines 12 and 14): turned round to the
    // query's way, not counted again, an answer without addresses.
    let nxdomain = dns[1];
    assert_eq!(nxdomain.src.workload, "node-local-dns");
    assert_eq!(nxdomain.dst.workload, "kube-dns");
    assert_eq!(nxdomain.src.ip, "10.156.2.2".parse().ok());
    assert_eq!((nxdomain.proto, nxdomain.dst_port), (6, 53));
    assert_eq!(nxdomain.count, 0);
    let l7 = nxdomain.l7.as_ref().unwrap();
    assert_eq!(l7.status, Some(3));
    assert_eq!(
        l7.dns,
        Some(DnsAnswer {
            ips: vec![],
            ttl: u32::MAX
        })
    );

    let scrape = records
        .iter()
        .find(|r| r.dst.identity == 2 && r.l7.is_some())
        .expect("prometheus scrape to world");
    let l7 = scrape.l7.as_ref().unwrap();
    assert_eq!(
        (l7.method.as_deref(), l7.path.as_deref()),
        (Some("GET"), Some("/metrics"))
    );
    assert_eq!(scrape.dst.workload, "world");
    assert_eq!(scrape.dst.labels.get("reserved:world"), Some(""));
    assert_eq!(scrape.src.workload, "prometheus");
    assert_eq!(scrape.src.namespace, "istio-system");
    assert_eq!(scrape.src.labels.get("app"), Some("prometheus"));

    let with_query = records
        .iter()
        .find(|r| r.src.workload == "shop-frontend")
        .unwrap();
    assert_eq!(with_query.node, "poc1/poc1-worker2");

    let audit = records
        .iter()
        .find(|r| r.verdict == Verdict::WouldDrop)
        .unwrap();
    assert_eq!(audit.dst.workload, "api-gateway");
    assert_eq!(audit.direction, Direction::Ingress);
    assert_eq!(audit.count, 1);
    assert_eq!(audit.window_start_ns, 1_789_310_630_263_381_540);

    let host = records
        .iter()
        .find(|r| r.src.identity == 1 && r.count == 1)
        .unwrap();
    assert_eq!(host.src.workload, "host");
}

#[test]
fn export_sample_with_field_masks_and_bare_wrappers() {
    let (records, summary) = hubble::read_file(&shared("export.jsonl")).unwrap();
    assert_eq!(summary.lines, 6);
    assert_eq!(
        summary.skipped.get("reply packet"),
        Some(&2),
        "{:?}",
        summary.skipped
    );
    let drops: Vec<_> = records
        .iter()
        .filter(|r| r.verdict == Verdict::Dropped)
        .collect();
    assert_eq!(drops.len(), 2);
    assert_eq!(drops[0].proto, 58);
    assert_eq!(drops[0].dst_port, 133, "ICMPv6 type in the port column");
    assert_eq!(drops[0].reason, "INVALID_SOURCE_IP");
    assert_eq!(drops[1].src.workload, "xwing");
    assert_eq!(drops[1].dst.workload, "deathstar");
    assert_eq!(drops[1].reason, "POLICY_DENIED");
    // No wrapper node_name: the flow's own node_name is used.
    let aks = records
        .iter()
        .find(|r| r.dst.workload == "kapinger-good")
        .unwrap();
    assert!(aks.node.contains("aks-nodepool1"), "{}", aks.node);
    assert_eq!(
        aks.count, 0,
        "an ACK/PSH of a running connection is not a new one"
    );
}

#[test]
fn legacy_bare_flows() {
    let (records, summary) = hubble::read_file(&shared("observe-json-legacy.jsonl")).unwrap();
    assert_eq!(summary.records, 2);
    assert!(records
        .iter()
        .all(|r| r.verdict == Verdict::Dropped && r.node == "k8s1"));
    assert_eq!(
        records[0].reason, "POLICY_DENIED",
        "from event_type.sub_type 133"
    );
    assert_eq!(records[1].src.identity, 4);
    assert_eq!(records[1].src.workload, "health");
    assert_eq!(records[1].dst.identity, 12345);
    assert_eq!(records[0].window_start_ns, 1_234_567_800_000);
}

#[test]
fn own_fixtures_cover_every_skip_reason_and_camel_case() {
    let (records, summary) = hubble::read_file(&fixture("extra.jsonl")).unwrap();
    let skipped = &summary.skipped;
    let expect = [
        ("non-flow event: node_status", 1),
        ("non-flow event: lost_events", 1),
        ("reply packet", 2),
        ("verdict ERROR", 1),
        ("no verdict", 1),
        ("no timestamp", 1),
        ("unparsable timestamp", 1),
        ("l7 kafka (not modelled)", 1),
        ("`flow` is not an object", 1),
        ("not a json object", 1),
        ("json object that is not a flow", 1),
        ("truncated json", 1),
        ("malformed json", 1),
    ];
    for (reason, n) in expect {
        assert_eq!(skipped.get(reason), Some(&n), "{reason}: {skipped:?}");
    }
    assert_eq!(summary.lines, 20, "blank lines are not counted");
    assert_eq!(records.len(), 6);

    // lowerCamelCase keys (protojson) read like proto names.
    let camel = &records[0];
    assert_eq!(camel.node, "node-a");
    assert_eq!(camel.dst_port, 8080);
    assert_eq!(camel.direction, Direction::Egress);
    assert_eq!(camel.src.workload, "frontend-app");
    assert_eq!(camel.dst.workload, "payments-api");

    let denied = &records[1];
    assert_eq!(denied.verdict, Verdict::L7Denied);
    let l7 = denied.l7.as_ref().unwrap();
    assert_eq!(l7.path.as_deref(), Some("/api/v1/refunds/123"));
    assert_eq!(l7.query.as_deref(), Some("force=true"));
    assert_eq!(l7.host.as_deref(), Some("payments-api.payments:8080"));

    let audit = &records[2];
    assert_eq!(audit.verdict, Verdict::L7WouldDeny);
    assert_eq!(
        audit.l7.as_ref().unwrap().host.as_deref(),
        Some("payments-api.payments:8080")
    );

    let dns = &records[3];
    assert_eq!((dns.proto, dns.dst_port), (17, 53));
    assert_eq!(dns.l7.as_ref().unwrap().method.as_deref(), Some("A,AAAA"));
    assert_eq!(
        dns.l7.as_ref().unwrap().host.as_deref(),
        Some("payments-api.payments.svc.cluster.local")
    );

    assert_eq!(records[4].dst.identity, 2);
    assert_eq!(records[5].count, 0);
}

#[test]
fn gzip_and_invalid_utf8_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("flows.jsonl.gz");
    let plain = std::fs::read(shared("observe-jsonpb.jsonl")).unwrap();
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&plain).unwrap();
    enc.write_all(b"\xff\xfe not utf-8\n").unwrap();
    enc.finish().unwrap();
    let (gz_records, gz_summary) = hubble::read_file(&gz).unwrap();
    let (records, _) = hubble::read_file(&shared("observe-jsonpb.jsonl")).unwrap();
    assert_eq!(gz_records, records);
    assert_eq!(gz_summary.skipped.get("invalid utf-8"), Some(&1));
}

#[test]
fn import_into_a_store_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlowStore::open(dir.path()).unwrap();
    let inputs: Vec<Input> = [
        "observe-jsonpb.jsonl",
        "export.jsonl",
        "observe-json-legacy.jsonl",
    ]
    .iter()
    .map(|n| Input::File(shared(n)))
    .chain([Input::File(fixture("extra.jsonl"))])
    .collect();
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = bytes.clone();
    let summary = hubble::import(
        &inputs,
        &mut store,
        std::sync::Arc::new(move |n| {
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }),
    )
    .unwrap();
    assert_eq!(summary.inputs, 4);
    let stored = store::read_all(dir.path()).unwrap();
    assert_eq!(stored.len() as u64, summary.records);
    let total: u64 = inputs.iter().map(|i| i.size().unwrap()).sum();
    assert_eq!(bytes.load(std::sync::atomic::Ordering::Relaxed), total);
}

#[test]
fn dns_answers_carry_their_addresses_and_ttl() {
    let (records, summary) = hubble::read_file(&fixture("dns-answers.jsonl")).unwrap();
    assert_eq!(summary.skipped_total(), 0, "{:?}", summary.skipped);
    assert_eq!(records.len(), 3);
    assert_eq!(summary.connections, 1, "the query is the connection");
    let (query, a, aaaa) = (&records[0], &records[1], &records[2]);
    for r in [query, a, aaaa] {
        assert_eq!(r.src.workload, "frontend");
        assert_eq!(r.dst.workload, "coredns");
        assert_eq!((r.proto, r.dst_port), (17, 53));
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.src.ip, "10.0.1.15".parse().ok());
        let l7 = r.l7.as_ref().unwrap();
        assert_eq!(l7.host.as_deref(), Some("api.github.com"));
    }
    assert_eq!(query.l7.as_ref().unwrap().dns, None);
    assert_eq!((a.count, aaaa.count), (0, 0));
    let answer = a.l7.as_ref().unwrap();
    assert_eq!(answer.status, Some(0));
    assert_eq!(
        answer.dns,
        Some(DnsAnswer {
            ips: vec![
                "140.82.121.6".parse().unwrap(),
                "140.82.121.5".parse().unwrap()
            ],
            ttl: 60
        })
    );
    // The address that does not parse is left out; no rcode stays None.
    let answer = aaaa.l7.as_ref().unwrap();
    assert_eq!(answer.status, None);
    assert_eq!(
        answer.dns,
        Some(DnsAnswer {
            ips: vec!["2606:50c0:8000::64".parse().unwrap()],
            ttl: 60
        })
    );

    // And through a store: the answers come back.
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlowStore::open(dir.path()).unwrap();
    store.append(&records).unwrap();
    store.close().unwrap();
    assert_eq!(store::read_all(dir.path()).unwrap(), records);
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = hubble::read_file(&fixture("nope.jsonl")).unwrap_err();
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}
