//! `learn`: the aggregated flow table over a store.

use std::path::PathBuf;
use std::sync::Arc;

use cnpilot_learner::aggregate::{groupby, learn, parse_since, LearnOptions};
use cnpilot_learner::hubble::{self, Input};
use cnpilot_learner::synth::{SynthConfig, SynthFlows};
use cnpilot_learner::{FlowRecord, FlowStore};

fn shared(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hubble/"
    ))
    .join(name)
}

#[test]
fn synthetic_store_aggregates_with_templates_and_totals() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<FlowRecord> = SynthFlows::new(SynthConfig::default())
        .take(20_000)
        .collect();
    let mut store = FlowStore::open_with(dir.path(), 6_000).unwrap();
    store.append(&records).unwrap();
    store.close().unwrap();

    let table = learn(&[dir.path().to_path_buf()], &LearnOptions::default()).unwrap();
    let total: u64 = table.rows.iter().map(|r| r.connections).sum();
    assert_eq!(total, 20_000);
    assert_eq!(table.scan.rows, 20_000);
    let bytes: u64 = records.iter().map(|r| r.bytes).sum();
    assert_eq!(table.rows.iter().map(|r| r.bytes).sum::<u64>(), bytes);

    // Every `/api/v1/charges/<n>` collapsed; raw paths kept (capped).
    let charges: Vec<_> = table
        .rows
        .iter()
        .filter(|r| r.path_template.as_deref() == Some("/api/v1/charges/{id}"))
        .collect();
    assert!(!charges.is_empty());
    assert!(charges
        .iter()
        .all(|r| !r.paths.is_empty() && r.paths.len() <= 20));
    assert!(table
        .rows
        .iter()
        .filter_map(|r| r.path_template.as_deref())
        .all(|p| !p
            .split('/')
            .any(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))));
    // World destinations keep their address as a CIDR; pods none.
    assert!(table
        .rows
        .iter()
        .filter(|r| r.dst_identity == 2)
        .all(|r| r.dst_peer.ends_with("/32")));
    assert!(table
        .rows
        .iter()
        .filter(|r| r.dst_identity >= 256)
        .all(|r| r.dst_peer.is_empty()));
    // Would-drops are visible per row.
    assert!(table.would_drops() > 0);
    let first = records.iter().map(|r| r.window_start_ns).min().unwrap();
    assert_eq!(
        table.rows.iter().map(|r| r.first_seen_ns).min(),
        Some(first)
    );

    // --since keeps only the tail.
    let cut = records[15_000].window_start_ns;
    let tail = learn(
        &[dir.path().to_path_buf()],
        &LearnOptions {
            since_ns: Some(cut),
            ..LearnOptions::default()
        },
    )
    .unwrap();
    assert_eq!(tail.rows.iter().map(|r| r.connections).sum::<u64>(), 5_000);

    // Parquet output frame has one row per summary.
    assert_eq!(table.to_frame().unwrap().height(), table.rows.len());

    // The polars group-by version agrees row for row (evidence included),
    // with and without --since.
    let dirs = [dir.path().to_path_buf()];
    assert_eq!(
        groupby::learn_groupby(&dirs, &LearnOptions::default())
            .unwrap()
            .rows,
        table.rows
    );
    let since = LearnOptions {
        since_ns: Some(cut),
        ..LearnOptions::default()
    };
    // --until keeps only the head, and the two windows add up.
    let head = learn(
        &dirs,
        &LearnOptions {
            until_ns: Some(cut),
            ..LearnOptions::default()
        },
    )
    .unwrap();
    assert_eq!(head.rows.iter().map(|r| r.connections).sum::<u64>(), 15_000);
    assert_eq!(
        groupby::learn_groupby(&dirs, &since).unwrap().rows,
        tail.rows
    );
}

/// The evidence paths are the smallest distinct ones, whatever the order
/// segments are read in (several workers fold segments concurrently).
#[test]
fn evidence_paths_do_not_depend_on_segment_order() {
    let mk = |paths: &[&str]| -> Vec<FlowRecord> {
        let template = SynthFlows::new(SynthConfig::default())
            .find(|r| r.l7.is_some())
            .unwrap();
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut r = template.clone();
                r.window_start_ns += i as i64;
                r.l7.as_mut().unwrap().path = Some(p.to_string());
                r.l7.as_mut().unwrap().method = Some("GET".into());
                r
            })
            .collect()
    };
    let forward: Vec<String> = (0..60).map(|i| format!("/api/v1/items/{i}")).collect();
    let backward: Vec<String> = forward.iter().rev().cloned().collect();
    let mut tables = Vec::new();
    for order in [&forward, &backward] {
        let dir = tempfile::tempdir().unwrap();
        // One record per segment: 60 segments read by all workers.
        let mut store = FlowStore::open_with(dir.path(), 1).unwrap();
        for path in order {
            store.append(&mk(&[path])).unwrap();
        }
        store.close().unwrap();
        tables.push(learn(&[dir.path().to_path_buf()], &LearnOptions::default()).unwrap());
    }
    let row = |t: &cnpilot_learner::aggregate::FlowTable| t.rows[0].paths.clone();
    assert_eq!(row(&tables[0]), row(&tables[1]));
    assert_eq!(row(&tables[0]).len(), 20);
    assert!(row(&tables[0]).contains("/api/v1/items/0"));
    assert!(!row(&tables[0]).contains("/api/v1/items/59"));
}

#[test]
fn hubble_samples_become_the_same_table_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FlowStore::open(dir.path()).unwrap();
    let inputs: Vec<Input> = [
        "observe-jsonpb.jsonl",
        "export.jsonl",
        "observe-json-legacy.jsonl",
    ]
    .iter()
    .map(|n| Input::File(shared(n)))
    .collect();
    hubble::import(&inputs, &mut store, Arc::new(|_| {})).unwrap();
    drop(store);
    let table = learn(&[dir.path().to_path_buf()], &LearnOptions::default()).unwrap();
    let dirs = [dir.path().to_path_buf()];
    assert_eq!(
        groupby::learn_groupby(&dirs, &LearnOptions::default())
            .unwrap()
            .rows,
        table.rows
    );
    let dns = table
        .rows
        .iter()
        .find(|r| r.l7_protocol.as_deref() == Some("dns"))
        .unwrap();
    assert_eq!(dns.src_workload, "node-local-dns");
    assert_eq!(dns.dst_workload, "kube-dns");
    // Three DNS requests for three names: one row (same method, no path).
    assert_eq!(dns.connections, 3);
    let scrape = table
        .rows
        .iter()
        .find(|r| r.dst_identity == 2 && r.dst_port == 9990)
        .unwrap();
    assert_eq!(scrape.dst_peer, "10.128.0.4/32");
    assert_eq!(scrape.path_template.as_deref(), Some("/metrics"));
    assert_eq!(scrape.verdicts.get("forwarded"), Some(&1));
    let audit = table
        .rows
        .iter()
        .find(|r| r.verdicts.contains_key("would-drop"))
        .unwrap();
    assert_eq!(audit.dst_workload, "api-gateway");
    assert!(table.would_drops() >= 3, "drops and the audit");
}

#[test]
fn since_accepts_times_and_durations() {
    let now = 1_767_225_600_000_000_000;
    assert_eq!(parse_since("2h", now), Ok(now - 7_200_000_000_000));
    assert_eq!(parse_since("2026-01-01T00:00:00Z", 0), Ok(now));
    assert!(parse_since("yesterday", now)
        .unwrap_err()
        .contains("RFC 3339"));
}
