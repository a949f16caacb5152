//! Shared by `cli/tests/observe.rs`: hand-written agent event lines, store
//! records, and running the binary.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use cnpilot_learner::{Direction, FlowRecord, Labels, Peer, Verdict};

pub const BIN: &str = env!("CARGO_BIN_EXE_cnpilot");
/// Today's agent: no type and no time on flow lines, peers by name only.
pub const UNTIMED: &str = r#"{"time_ns":7,"verdict":"dropped","reason":"deny-rule","direction":"egress","proto":"tcp","src":{"ip":"198.18.2.2","port":42000,"identity":301,"name":"payments/payments-api"},"dst":{"ip":"198.19.50.10","port":443,"identity":2,"name":"world"},"rule_id":9}"#;

pub const WEB: &str = r#"{"ip":"198.18.1.2","port":41000,"identity":300,"name":"web/frontend-app","namespace":"web","pod":"frontend-app-7d77448bf5-g59cc","labels":["k8s:app=frontend-app","k8s:io.kubernetes.pod.namespace=web"]}"#;
pub const API: &str = r#"{"ip":"198.18.2.2","port":8080,"identity":301,"name":"payments/payments-api","namespace":"payments","pod":"payments-api-0","labels":["k8s:app=payments-api","k8s:io.kubernetes.pod.namespace=payments"]}"#;
pub const WORKER: &str = r#"{"ip":"198.18.3.2","port":50000,"identity":310,"name":"tenant-a/worker","namespace":"tenant-a","pod":"worker-0","labels":["k8s:app=worker","k8s:io.kubernetes.pod.namespace=tenant-a"]}"#;
pub const DNS: &str = r#"{"ip":"198.18.4.53","port":53,"identity":320,"name":"kube-system/kube-dns","namespace":"kube-system","pod":"kube-dns-0","labels":["k8s:app=kube-dns","k8s:io.kubernetes.pod.namespace=kube-system"]}"#;

pub fn flow_line(
    time: &str,
    verdict: &str,
    reason: &str,
    proto: &str,
    src: &str,
    dst: &str,
) -> String {
    format!(
        r#"{{"type":"l3-l4","time":"{time}","time_ns":1,"verdict":"{verdict}","reason":"{reason}","direction":"egress","endpoint_namespace":null,"proto":"{proto}","src":{src},"dst":{dst},"rule_id":0,"node":"cnp-node"}}"#
    )
}

pub fn http_line(time: &str, verdict: &str, method: &str, path: &str, status: u16) -> String {
    format!(
        r#"{{"type":"http","time":"{time}","time_ns":1,"verdict":"{verdict}","method":"{method}","path":"{path}","query":null,"host":null,"status":{status},"src":{WEB},"dst":{API},"reason":"","node":"cnp-node"}}"#
    )
}

pub fn events() -> Vec<String> {
    vec![
        flow_line("2026-12-04T21:00:00.1Z", "forwarded", "", "tcp", WEB, API),
        http_line(
            "2026-12-04T21:00:00.2Z",
            "allowed",
            "GET",
            "/api/v1/charges",
            200,
        ),
        http_line(
            "2026-12-04T21:00:00.3Z",
            "l7-denied",
            "POST",
            "/api/v1/refunds",
            403,
        ),
        flow_line(
            "2026-12-04T21:00:01Z",
            "would-drop",
            "default-deny",
            "udp",
            WORKER,
            DNS,
        ),
    ]
}

pub fn cnpilot(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CNPILOT_AGENT_SOCKET")
        .output()
        .expect("run cnpilot")
}

pub fn ok(args: &[&str]) -> String {
    let out = cnpilot(args);
    assert!(
        out.status.success(),
        "cnpilot {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

pub fn write_events(dir: &Path, lines: &[String]) -> String {
    let path = dir.join("events.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write events");
    path.display().to_string()
}

pub fn peer(ns: &str, workload: &str, identity: u32, ip: &str) -> Peer {
    let labels: Labels = [("app", workload), ("io.kubernetes.pod.namespace", ns)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Peer {
        identity,
        namespace: ns.into(),
        workload: workload.into(),
        labels,
        ip: ip.parse().ok(),
    }
}

pub fn store_records(n: i64) -> Vec<FlowRecord> {
    (0..n)
        .map(|i| FlowRecord {
            window_start_ns: 1_796_418_000_000_000_000 + i * 1_000_000,
            window_end_ns: 1_796_418_000_000_000_000 + i * 1_000_000,
            node: "cnp-node".into(),
            src: peer("web", "frontend-app", 300, "198.18.1.2"),
            dst: peer("payments", "payments-api", 301, "198.18.2.2"),
            proto: 6,
            dst_port: 8080 + i as u16,
            direction: if i == 1 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            verdict: [Verdict::Forwarded, Verdict::WouldDrop, Verdict::Dropped][i as usize],
            reason: ["", "default-deny", "deny-rule"][i as usize].into(),
            l7: None,
            packets: 1,
            bytes: 0,
            count: 1,
        })
        .collect()
}

/// Lines of a child's stdout as they come, so a test can wait with a
/// deadline for output of a command that never ends by itself.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

pub fn next(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a line within 30 s")
}

pub fn stop(mut child: Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    stderr
}
