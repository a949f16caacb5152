//! HTTP visibility on real packets (root tier): with no policy at all and
//! every namespace in enforce, the agent's proxy records every request to
//! the ports pods declare as HTTP and forwards it; bytes that are not HTTP
//! on a visibility port pass untouched; traffic that never passes a client
//! veth (the node itself) is not dropped as a proxy bypass.

use std::process::Command;

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::{Lab, SeedAgent as Agent};

/// A DNS query over TCP, written by hand: the bytes are not HTTP.
const DNS_OVER_TCP: &str = r#"
import socket, struct, sys
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
for label in b"payments-api.payments.svc.cluster.local".split(b"."):
    q += bytes([len(label)]) + label
q += b"\x00" + struct.pack(">HH", 1, 1)
s = socket.create_connection((sys.argv[1], 53), timeout=3)
s.sendall(struct.pack(">H", len(q)) + q)
n = struct.unpack(">H", s.recv(2))[0]
r = b""
while len(r) < n:
    r += s.recv(n - len(r))
ident, flags, qd, an = struct.unpack(">HHHH", r[:8])
print("id=%x rcode=%d answers=%d" % (ident, flags & 0xF, an))
"#;

#[test]
fn visibility_records_http_and_never_breaks_anything() {
    if !privileged_tests_enabled("visibility_records_http_and_never_breaks_anything") {
        return;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().unwrap();
    assert!(lab
        .cnpilot(&["lab", "up", "--scenario", "seed"])
        .status
        .success());
    let state = lab.state();
    let dns_ip = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "kube-system")
        .and_then(|p| p["ip"].as_str())
        .unwrap()
        .to_string();
    let payments_ip = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "payments")
        .and_then(|p| p["ip"].as_str())
        .unwrap()
        .to_string();
    let node_netns = state["node"]["netns"].as_str().unwrap().to_string();

    // TCP/53 (DNS, not HTTP) on top of the declared HTTP ports; no DNS
    // proxy, which would take pods' TCP/53 at their egress first.
    let agent = Agent::start_with(
        &lab,
        work.path(),
        None,
        "enforce",
        &["--http-visibility", "auto,53", "--dns-proxy-port", "0"],
    );
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        "web/frontend-app",
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "http://payments-api.payments:8080/api/v1/refunds",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "no policy: nothing is denied"
    );
    let ev = agent.wait_http("POST /api/v1/refunds recorded", |e| {
        e["path"] == "/api/v1/refunds"
    });
    assert_eq!(ev["method"], "POST");
    assert_eq!(ev["status"], 200);
    assert_eq!(ev["src"]["name"], "web/frontend-app");

    let out = lab.cnpilot(&[
        "lab",
        "exec",
        "web/frontend-app",
        "--",
        "python3",
        "-c",
        DNS_OVER_TCP,
        &dns_ip,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("id=1234 rcode=0 answers="),
        "DNS over TCP through the proxy: {text:?}"
    );
    let unparsed = agent
        .http_events()
        .into_iter()
        .any(|e| e["dst"]["port"] == 53 || e["dst"]["name"] == "kube-system/kube-dns");
    assert!(
        unparsed,
        "the proxy saw the TCP/53 connection (recorded as not HTTP)"
    );

    // The node reaches a pod's visibility port directly: no client veth,
    // no proxy, and no bypass drop.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node_netns,
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{payments_ip}:8080/api/v1/charges"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let dropped = agent
        .all_events()
        .into_iter()
        .filter(|e| e["verdict"] == "dropped")
        .count();
    assert_eq!(dropped, 0, "{:#?}", agent.all_events());
    drop(agent);
}
