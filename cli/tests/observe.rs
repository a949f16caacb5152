//! `cnpilot observe` as a user runs it: events file → `-o json` → `import
//! hubble` → `learn`; a flow store → `-o json` → `import hubble`; a live
//! agent socket played by a tiny server in the test. No root needed.

#[path = "support/observe.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cnpilot_learner::{store, FlowStore};
use support::*;

#[test]
fn events_to_hubble_json_to_import_to_learn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = write_events(dir.path(), &events());
    let json = ok(&["observe", "--events", &events, "-o", "json"]);
    assert_eq!(json.lines().count(), 4, "{json}");
    let out = dir.path().join("out.json");
    std::fs::write(&out, &json).expect("write out.json");
    let store = dir.path().join("store");
    let store = store.to_str().expect("utf-8 path");
    let summary = ok(&[
        "import",
        "hubble",
        out.to_str().expect("utf-8"),
        "--store",
        store,
    ]);
    assert!(
        summary.starts_with("imported 4 flow record(s)"),
        "{summary}"
    );

    let rows: serde_json::Value =
        serde_json::from_str(&ok(&["learn", "--store", store, "-o", "json"])).expect("learn json");
    let rows = rows.as_array().expect("rows");
    let find = |src: &str, method: Option<&str>| {
        rows.iter()
            .find(|r| r["src_workload"] == src && r["l7_method"].as_str() == method)
            .unwrap_or_else(|| panic!("no row from {src} {method:?} in {rows:#?}"))
    };
    let tcp = find("frontend-app", None);
    assert_eq!(
        (
            &tcp["src_namespace"],
            &tcp["dst_namespace"],
            &tcp["dst_workload"]
        ),
        (&"web".into(), &"payments".into(), &"payments-api".into())
    );
    assert_eq!((&tcp["proto"], &tcp["dst_port"]), (&6.into(), &8080.into()));
    assert_eq!(tcp["verdicts"]["forwarded"], 1);
    assert_eq!(tcp["src_labels"]["app"], "frontend-app");
    let refunds = find("frontend-app", Some("POST"));
    assert_eq!(refunds["path_template"], "/api/v1/refunds");
    assert_eq!(refunds["verdicts"]["l7-denied"], 1);
    assert_eq!(
        find("frontend-app", Some("GET"))["verdicts"]["forwarded"],
        1
    );
    let dns = find("worker", None);
    assert_eq!(
        (&dns["dst_workload"], &dns["proto"], &dns["dst_port"]),
        (&"kube-dns".into(), &17.into(), &53.into())
    );
    assert_eq!(dns["verdicts"]["would-drop"], 1);
}

#[test]
fn store_to_hubble_json_to_import_keeps_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let original = dir.path().join("original");
    let records = store_records(3);
    let mut s = FlowStore::open(&original).expect("open store");
    // Appended out of order: observe sorts a store by time.
    s.append(&[records[2].clone(), records[0].clone(), records[1].clone()])
        .expect("append");
    s.close().expect("close");

    let original = original.to_str().expect("utf-8");
    let table = ok(&["observe", "--store", original]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TIMESTAMP "), "{table}");
    assert!(
        lines[1].contains("TCP to 8080") && lines[3].contains("DROPPED"),
        "{table}"
    );
    let json = ok(&[
        "observe",
        "--store",
        original,
        "-o",
        "json",
        "--verdict",
        "would-drop,dropped",
    ]);
    assert_eq!(json.lines().count(), 2, "{json}");
    let out = dir.path().join("out.json");
    std::fs::write(&out, &json).expect("write");
    let copy = dir.path().join("copy");
    ok(&[
        "import",
        "hubble",
        out.to_str().expect("utf-8"),
        "--store",
        copy.to_str().expect("utf-8"),
    ]);
    let mut back = store::read_all(&copy).expect("read copy");
    back.sort_by_key(|r| r.window_start_ns);
    // Reasons come back in Cilium's names.
    let mut expected = records[1..].to_vec();
    expected[0].reason = "POLICY_DENIED".into();
    expected[1].reason = "POLICY_DENY".into();
    assert_eq!(back, expected);
}

#[test]
fn bad_input_is_a_one_line_error_with_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let cases: [(&[&str], &str); 5] = [
        (
            &["observe", "--events", "x", "--verdict", "nope"],
            "would-drop",
        ),
        (&["observe", "--events", "x", "--type", "kafka"], "l3-l4"),
        (&["observe", "--socket", "x", "--last", "3"], "--last"),
        (
            &["observe", "--events", "x", "--from-pod", "web"],
            "NAMESPACE/POD",
        ),
        (
            &["observe", "--socket", sock.to_str().expect("utf-8")],
            "cnpilot agent",
        ),
    ];
    for (args, needle) in cases {
        let out = cnpilot(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let out = cnpilot(&["observe", "--socket", sock.to_str().expect("utf-8")]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(sock.to_str().expect("utf-8")));
}

#[test]
fn live_socket_streams_events_and_warns_about_lost_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut op = String::new();
        BufReader::new(conn.try_clone().expect("clone"))
            .read_line(&mut op)
            .expect("read op");
        let lines = events();
        let untimed = UNTIMED.to_string();
        let stream = [
            lines[0].clone(),
            r#"{"type":"lost","count":17}"#.to_string(),
            lines[2].clone(),
            untimed,
        ];
        for line in stream {
            conn.write_all(format!("{line}\n").as_bytes())
                .expect("write");
        }
        // Like the agent: the stream stays open until the client goes.
        let _ = done_rx.recv_timeout(Duration::from_secs(60));
        op
    });
    let mut child = Command::new(BIN)
        .args(["observe", "-o", "json"])
        .env("CNPILOT_AGENT_SOCKET", &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn observe");
    let rx = stdout_lines(&mut child);
    let got: Vec<serde_json::Value> = (0..3)
        .map(|_| serde_json::from_str(&next(&rx)).expect("json line"))
        .collect();
    let stderr = stop(child);
    let _ = done_tx.send(());
    assert_eq!(server.join().expect("server"), "{\"op\":\"events\"}\n");
    assert_eq!(got[0]["flow"]["verdict"], "FORWARDED");
    assert_eq!(
        got[0]["flow"]["source"]["pod_name"],
        "frontend-app-7d77448bf5-g59cc"
    );
    assert_eq!(got[1]["flow"]["l7"]["http"]["code"], 403);
    assert_eq!(got[1]["flow"]["verdict"], "DROPPED");
    // No time on the line: stamped on arrival, world named by its label.
    assert_eq!(got[2]["flow"]["destination"]["labels"][0], "reserved:world");
    assert_eq!(got[2]["flow"]["drop_reason_desc"], "POLICY_DENY");
    assert!(got[2]["flow"]["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(
        stderr.contains("cnpilot observe: 17 events lost (this client was too slow)"),
        "{stderr}"
    );
}

#[test]
fn follow_prints_lines_appended_to_the_events_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = events();
    let path = write_events(dir.path(), &lines[..1]);
    let mut child = Command::new(BIN)
        .args(["observe", "--events", &path, "--follow", "--type", "http"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn observe");
    let rx = stdout_lines(&mut child);
    assert!(next(&rx).starts_with("TIMESTAMP "));
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open for append");
    // Half a line first: nothing may be printed until its newline.
    let (head, tail) = lines[2].split_at(40);
    file.write_all(head.as_bytes()).expect("append");
    file.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(500));
    file.write_all(format!("{tail}\n").as_bytes())
        .expect("append");
    let row = next(&rx);
    let stderr = stop(child);
    assert!(
        row.contains("HTTP/1.1 403 POST /api/v1/refunds"),
        "{row}\n{stderr}"
    );
    assert!(row.starts_with("Dec  4 21:00:00.300"), "{row}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn an_agent_that_refuses_the_stream_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind");
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut op = String::new();
        BufReader::new(conn.try_clone().expect("clone"))
            .read_line(&mut op)
            .expect("read op");
        conn.write_all(b"{\"error\":\"unknown op\"}\n")
            .expect("write");
    });
    let out = cnpilot(&["observe", "--socket", path.to_str().expect("utf-8")]);
    server.join().expect("server");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("refused the event stream: unknown op"),
        "{stderr}"
    );
}

#[test]
fn table_of_an_events_file_is_aligned_and_filtered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = events();
    lines.insert(1, "not json".into());
    let events = write_events(dir.path(), &lines);
    let out = cnpilot(&[
        "observe", "--events", &events, "--type", "http", "--last", "1",
    ]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).expect("utf-8");
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(
        rows[0].find("VERDICT"),
        rows[1].find("L7-DENIED"),
        "{table}"
    );
    assert!(rows[1].starts_with("Dec  4 21:00:00.300  web/frontend-app-7d77448bf5-g59cc:41000  payments/payments-api-0:8080  http  L7-DENIED  HTTP/1.1 403 POST /api/v1/refunds, denied"), "{table}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("skipping line 2: not an event line"),
        "{stderr}"
    );

    let out = cnpilot(&[
        "observe",
        "--events",
        &events,
        "-n",
        "kube-system",
        "--verdict",
        "dropped",
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no flow matched"));
}

#[test]
fn follow_on_a_store_prints_segments_written_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let records = store_records(3);
    let mut s = FlowStore::open(&path).expect("open store");
    s.append(&records[..1]).expect("append");
    s.close().expect("close");
    let mut child = Command::new(BIN)
        .args([
            "observe",
            "--store",
            path.to_str().expect("utf-8"),
            "--follow",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn observe");
    let rx = stdout_lines(&mut child);
    let first: serde_json::Value = serde_json::from_str(&next(&rx)).expect("json");
    assert_eq!(first["flow"]["verdict"], "FORWARDED");
    // A later writer (the agent flushes every 10 s) adds a segment.
    let mut s = FlowStore::open(&path).expect("reopen store");
    s.append(&records[1..]).expect("append");
    s.close().expect("close");
    let later: Vec<serde_json::Value> = (0..2)
        .map(|_| serde_json::from_str(&next(&rx)).expect("json"))
        .collect();
    let stderr = stop(child);
    assert_eq!(later[0]["flow"]["verdict"], "AUDIT", "{stderr}");
    assert_eq!(later[1]["flow"]["verdict"], "DROPPED", "{stderr}");
}

/// Real Hubble records (the learner's fixtures) → a store → `observe -o
/// json` → `import hubble` → the same records.
#[test]
fn real_hubble_records_survive_a_store_observe_import_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../learner/tests/fixtures/hubble");
    let mut inputs: Vec<String> = std::fs::read_dir(&fixtures)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| p.display().to_string())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    let first = dir.path().join("first");
    let first = first.to_str().expect("utf-8");
    let mut args = vec!["import", "hubble"];
    args.extend(inputs.iter().map(String::as_str));
    args.extend(["--store", first]);
    ok(&args);

    let json = ok(&["observe", "--store", first, "-o", "json"]);
    let out = dir.path().join("out.json");
    std::fs::write(&out, &json).expect("write");
    let second = dir.path().join("second");
    ok(&[
        "import",
        "hubble",
        out.to_str().expect("utf-8"),
        "--store",
        second.to_str().expect("utf-8"),
    ]);

    let sorted = |dir: &Path| {
        let mut records = store::read_all(dir).expect("read store");
        records.sort_by_key(|r| format!("{r:?}"));
        records
    };
    let (a, b) = (sorted(Path::new(first)), sorted(&second));
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a, b);
    }
}
