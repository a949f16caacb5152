//! L7 on the lab through the real agent (root tier): `cnpilot lab up`, the
//! agent with the article's policies in audit, `cnpilot mode -n payments
//! enforce`, and the article's verification curls from inside the pods.
//! The tc program hands connections on payments-api:8080 (HTTP rules on its
//! ingress) to the agent's transparent proxy in the node namespace
//! (`bpf_sk_assign` + mark + a local route there); the proxy's upstream leg
//! carries the client's identity in its mark.
//!
//! | step | from | request | expected |
//! |---|---|---|---|
//! | audit | web/frontend-app | POST /api/v1/refunds | 200 + an `l7-would-deny` http event |
//! | audit, then flip | web/frontend-app | POST /api/v1/refunds twice on ONE keep-alive connection, `mode enforce` in between | 200, then 403 |
//! | enforce | web/frontend-app | POST /api/v1/charges | 200 |
//! | enforce | web/frontend-app | POST /api/v1/refunds | 403 `Access denied` |
//! | enforce | data/analytics-service | GET /api/v1/charges | 200 |
//! | enforce | data/analytics-service | POST /api/v1/charges | 403 `Access denied` |
//! | enforce | tenant-a/worker | GET /api/v1/charges | no answer (dropped at L3/L4, never reaches the proxy) |

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::{cnpilot_bin, Lab, SeedAgent as Agent};

/// `curl` from inside a pod: (status code as curl prints it, body).
fn curl(lab: &Lab, pod: &str, method: &str, path: &str) -> (String, String) {
    let url = format!("http://payments-api.payments:8080{path}");
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        pod,
        "--",
        "curl",
        "-s",
        "-m",
        "3",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        &url,
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    (code.trim().to_string(), body.to_string())
}

/// A Python `http.client` in web/frontend-app: POST refunds, write
/// `STATUS LOCALADDR`, wait for `go` to exist, the same again on the same
/// connection.
fn keepalive_client(lab: &Lab, results: &std::path::Path, go: &std::path::Path) -> Child {
    let script = format!(
        r#"
import http.client, os, time
c = http.client.HTTPConnection("payments-api.payments", 8080, timeout=5)
def post():
    c.request("POST", "/api/v1/refunds")
    r = c.getresponse()
    r.read()
    with open({results:?}, "a") as f:
        f.write("%d %s\n" % (r.status, c.sock.getsockname()))
post()
give_up = time.time() + 30  # never outlive a failed test
while not os.path.exists({go:?}) and time.time() < give_up:
    time.sleep(0.05)
post()
"#,
        results = results.to_str().unwrap(),
        go = go.to_str().unwrap(),
    );
    Command::new(cnpilot_bin())
        .args([
            "lab",
            "exec",
            "web/frontend-app",
            "--",
            "python3",
            "-c",
            &script,
        ])
        .env("CNPILOT_LAB_PREFIX", &lab.prefix)
        .env("CNPILOT_LAB_DIR", lab.dir.path())
        .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the keep-alive client")
}

#[test]
fn the_articles_l7_curls_through_the_agents_proxy() {
    if !privileged_tests_enabled("the_articles_l7_curls_through_the_agents_proxy") {
        return;
    }
    let lab = Lab::new();
    let up = lab.cnpilot(&["lab", "up", "--scenario", "seed"]);
    assert_eq!(up.status.code(), Some(0), "lab up failed");
    let out = tempfile::tempdir().unwrap();
    let agent = Agent::start(&lab, out.path());
    let node = lab.state()["node"]["netns"].as_str().unwrap().to_string();

    // The agent's route for marked packets lives in the node namespace.
    let rules = Command::new("ip")
        .args(["-n", &node, "rule", "show"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("fwmark 0x200/0xf00 lookup 2004"),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );

    // Audit: forwarded, recorded as a would-be 403.
    let (code, _) = curl(&lab, "web/frontend-app", "POST", "/api/v1/refunds");
    assert_eq!(code, "200", "audit forwards everything");
    let ev = agent.wait_http("l7-would-deny for POST refunds", |e| {
        e["verdict"] == "l7-would-deny" && e["path"] == "/api/v1/refunds"
    });
    assert_eq!(ev["method"], "POST");
    assert_eq!(ev["src"]["name"], "web/frontend-app");
    assert_eq!(ev["dst"]["name"], "payments/payments-api");
    assert_eq!(ev["status"], 200);

    // A keep-alive connection opened in audit: after the flip, its next
    // request is already enforced (the proxy reads the mode per request).
    let results = out.path().join("keepalive.txt");
    let go = out.path().join("go");
    let mut client = keepalive_client(&lab, &results, &go);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&results)
        .unwrap_or_default()
        .lines()
        .count()
        < 1
    {
        assert!(
            Instant::now() < deadline,
            "keep-alive client: no first answer"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let flip = lab.cnpilot(&[
        "mode",
        "-n",
        "payments",
        "enforce",
        "--pin-dir",
        agent.pin(),
    ]);
    assert_eq!(flip.status.code(), Some(0));

    std::fs::write(&go, "").unwrap();
    let status = client.wait().unwrap();
    let lines = std::fs::read_to_string(&results).unwrap();
    assert!(status.success(), "keep-alive client failed: {lines}");
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let (first, second) = (
        lines[0].split_once(' ').unwrap(),
        lines[1].split_once(' ').unwrap(),
    );
    assert_eq!(first.0, "200", "audit: {lines:?}");
    assert_eq!(
        second.0, "403",
        "enforced on the open connection: {lines:?}"
    );
    assert_eq!(
        first.1, second.1,
        "both requests on one connection: {lines:?}"
    );

    let cases = [
        ("web/frontend-app", "POST", "/api/v1/charges", "200"),
        ("web/frontend-app", "POST", "/api/v1/refunds", "403"),
        ("data/analytics-service", "GET", "/api/v1/charges", "200"),
        ("data/analytics-service", "POST", "/api/v1/charges", "403"),
    ];
    for (pod, method, path, want) in cases {
        let (code, body) = curl(&lab, pod, method, path);
        assert_eq!(code, want, "{pod} {method} {path}: body {body:?}");
        if want == "403" {
            // Envoy's local reply, as Cilium sends it: `Access denied\r\n`.
            assert_eq!(body.trim_end(), "Access denied", "{pod} {method} {path}");
            agent.wait_http("l7-denied", |e| {
                e["verdict"] == "l7-denied"
                    && e["method"] == method
                    && e["path"] == path
                    && e["src"]["name"] == pod
            });
        } else {
            assert!(body.contains(path), "the server answered: {body:?}");
        }
    }

    // Not allowed at L3/L4: dropped in the kernel, the proxy never sees it.
    let (code, body) = curl(&lab, "tenant-a/worker", "GET", "/api/v1/charges");
    assert_eq!(
        code, "000",
        "tenant-a must get no answer, got body {body:?}"
    );
    assert!(
        agent
            .http_events()
            .iter()
            .all(|e| e["src"]["name"] != "tenant-a/worker"),
        "tenant-a reached the proxy: {:#?}",
        agent.http_events()
    );

    let pin_dir = agent.pin_dir.clone();
    drop(agent);
    assert!(!pin_dir.exists(), "agent --down left {}", pin_dir.display());
    let rules = Command::new("ip")
        .args(["-n", &node, "rule", "show"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("lookup 2004"),
        "agent --down left the proxy route rule"
    );
    drop(lab);
}
