//! `cnpilot bench ingest` (root tier): events through a real BPF ring
//! buffer into the flow store, at a rate a debug build keeps up with. Every
//! event the kernel produced must be read and stored: no ring-full drop,
//! no row missing.

use std::process::Command;

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::cnpilot_bin;

#[test]
fn ring_buffer_events_all_reach_the_store() {
    if !privileged_tests_enabled("ring_buffer_events_all_reach_the_store") {
        return;
    }
    let out = Command::new(cnpilot_bin())
        .args([
            "bench",
            "ingest",
            "--seconds",
            "1",
            "--rate",
            "20000",
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "bench ingest failed: {stderr}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    // read only (baseline), inline store, reader thread + store thread
    assert_eq!(rows.len(), 3);
    for row in rows {
        let attempted = row["attempted"].as_u64().unwrap();
        // One second at 20,000/s, give or take the producer's sleeps.
        assert!(attempted >= 10_000, "{row}");
        assert_eq!(row["ring_full"], 0, "{row}");
        assert_eq!(row["delivered"].as_u64(), Some(attempted), "{row}");
    }
    let stored = &rows[1];
    assert_eq!(
        stored["stored"].as_u64(),
        stored["delivered"].as_u64(),
        "{stored}"
    );
}
