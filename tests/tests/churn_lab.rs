//! Pod churn through the agent's snapshot inventory (`--inventory lab`
//! reads the lab's `inventory.json`, a kubectl-shaped file, like any
//! snapshot): a pod that appears is attached within 2 s, a pod that goes is
//! detached, and a pod that reuses a gone pod's IP is judged with its own
//! identity from its first packet on.

use std::path::Path;
use std::time::{Duration, Instant};

use cnpilot_e2e::steps::{seed_lab, NewPod};
use cnpilot_e2e::{Lab, SeedAgent};
use serde_json::{json, Value};

const IP: &str = "198.18.200.10";

fn inventory_path(lab: &Lab) -> std::path::PathBuf {
    lab.dir.path().join("inventory.json")
}

/// Written as a cluster changes: whole files, swapped in by rename.
fn write_inventory(lab: &Lab, inventory: &Value) {
    let path = inventory_path(lab);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(inventory).unwrap()).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn read_inventory(lab: &Lab) -> Value {
    serde_json::from_slice(&std::fs::read(inventory_path(lab)).unwrap()).unwrap()
}

fn add_pod(lab: &Lab, namespace: &str, name: &str, app: &str) {
    let node = lab.state()["node"]["name"].as_str().unwrap().to_string();
    let created = chrono_like_now_minus_one_second();
    let mut inv = read_inventory(lab);
    inv["items"].as_array_mut().unwrap().push(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": app},
            "creationTimestamp": created,
        },
        "spec": {"nodeName": node, "containers": [{"name": app, "image": "x"}]},
        "status": {"phase": "Running", "podIP": IP, "podIPs": [{"ip": IP}]},
    }));
    write_inventory(lab, &inv);
}

fn remove_pod(lab: &Lab, name: &str) {
    let mut inv = read_inventory(lab);
    inv["items"]
        .as_array_mut()
        .unwrap()
        .retain(|item| !(item["kind"] == "Pod" && item["metadata"]["name"] == name));
    write_inventory(lab, &inv);
}

/// RFC 3339, a second ago (whole seconds, as the API server writes them).
fn chrono_like_now_minus_one_second() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", "1 second ago", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits for an agent log line containing `text`; how long it took.
fn wait_log(agent: &SeedAgent<'_>, text: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    while !agent.stderr_text().contains(text) {
        assert!(
            started.elapsed() < limit,
            "no `{text}` from the agent within {limit:?}:\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

/// The names the agent gave the source of every flow event from `ip`.
fn source_names(agent: &SeedAgent<'_>, ip: &str) -> Vec<String> {
    agent
        .all_events()
        .iter()
        .filter(|e| e["type"] != "http" && e["src"]["ip"] == ip)
        .map(|e| e["src"]["name"].as_str().unwrap_or("").to_string())
        .collect()
}

fn link_pinned(pin_dir: &Path, veth: &str) -> bool {
    std::fs::read_dir(pin_dir.join("links"))
        .map(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains(veth))
        })
        .unwrap_or(false)
}

#[test]
fn pods_that_come_and_go_are_attached_detached_and_reused_ips_rejudged() {
    let Some((lab, work)) =
        seed_lab("pods_that_come_and_go_are_attached_detached_and_reused_ips_rejudged")
    else {
        return;
    };
    let agent = SeedAgent::start(&lab, work.path());
    let payments = lab.first_pod_ip("payments");
    let url = format!("http://{payments}:8080/api/v1/charges");
    let veth = format!("{}np0", lab.prefix);

    // 1. A new pod: wired (netns, veth, /32 route) and in the inventory.
    let newcomer = NewPod::start(&lab, IP);
    add_pod(&lab, "web", "newcomer-1", "newcomer");
    let took = wait_log(&agent, "attached web/newcomer-1", Duration::from_secs(5));
    eprintln!("new pod attached {took:?} after the inventory changed");
    assert!(took < Duration::from_secs(2), "attached after {took:?}");
    assert!(link_pinned(&agent.pin_dir, &veth));
    assert_eq!(newcomer.curl(&url), "200", "audit: nothing dropped");
    std::thread::sleep(Duration::from_millis(300));
    let names = source_names(&agent, IP);
    assert!(!names.is_empty(), "no flow event from the new pod");
    assert!(
        names.iter().all(|n| n == "web/newcomer"),
        "judged as {names:?}"
    );

    // 2. It goes: detached, its link unpinned.
    remove_pod(&lab, "newcomer-1");
    drop(newcomer);
    wait_log(&agent, "detached web/newcomer-1", Duration::from_secs(5));
    assert!(
        !link_pinned(&agent.pin_dir, &veth),
        "its links are unpinned"
    );

    // 3. Another pod takes its IP: from its first packet on, it is itself.
    let before = agent.all_events().len();
    let reuser = NewPod::start(&lab, IP);
    add_pod(&lab, "data", "reuser-1", "reuser");
    let took = wait_log(&agent, "attached data/reuser-1", Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "attached after {took:?}");
    assert_eq!(reuser.curl(&url), "200");
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<String> = agent.all_events()[before..]
        .iter()
        .filter(|e| e["type"] != "http" && e["src"]["ip"] == IP)
        .map(|e| e["src"]["name"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!after.is_empty(), "no flow event from the reusing pod");
    assert!(
        after.iter().all(|n| n == "data/reuser"),
        "the reused IP was judged as {after:?}"
    );
    drop(reuser);
    drop(agent);
}

/// Two nodes, an agent on each (`--node`, `--node-netns`), each writing its
/// own store; the stores' `node=NAME` partitions merged into one directory
/// are one table to `learn`, a flow seen on both nodes (egress on one,
/// ingress on the other) listing both.
#[test]
fn two_nodes_two_agents_one_store_directory() {
    if !cnpilot_bpf::testing::privileged_tests_enabled("two_nodes_two_agents_one_store_directory") {
        return;
    }
    let lab = Lab::new();
    let up = lab.cnpilot(&["lab", "up", "--scenario", "two-nodes"]);
    assert!(up.status.success(), "lab up failed");
    let state = lab.state();
    let node1 = state["node"]["name"].as_str().unwrap().to_string();
    let node2 = state["remoteNodes"][0]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let node2_netns = format!(
        "/run/netns/{}",
        state["remoteNodes"][0]["netns"].as_str().unwrap()
    );
    let work = tempfile::tempdir().unwrap();
    let (s1, s2) = (work.path().join("s1"), work.path().join("s2"));
    let pin1 = format!("/sys/fs/bpf/cnpilot-{}", lab.prefix);
    let pin2 = format!("/sys/fs/bpf/cnpilot-{}-n2", lab.prefix);
    let record = |store: &Path, pin: &str, extra: &[&str]| {
        std::process::Command::new(cnpilot_e2e::cnpilot_bin())
            .args([
                "record",
                "--duration",
                "9s",
                "--events",
                "/dev/null",
                "--pin-dir",
                pin,
            ])
            .arg("--store")
            .arg(store)
            .args(extra)
            .env("CNPILOT_LAB_PREFIX", &lab.prefix)
            .env("CNPILOT_LAB_DIR", lab.dir.path())
            .env("CNPILOT_STATE_DIR", lab.dir.path().join("state"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = record(&s1, &pin1, &[]);
    let second = record(
        &s2,
        &pin2,
        &[
            "--node",
            &node2,
            "--node-netns",
            &node2_netns,
            "--proxy-port",
            "0",
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    let traffic = lab.cnpilot(&["lab", "traffic", "--duration", "4s"]);
    assert!(traffic.status.success() || traffic.status.code() == Some(1));
    for (child, pin) in [(first, &pin1), (second, &pin2)] {
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        eprintln!("record ({pin}): {err}");
        assert!(err.contains("pods attached"), "{err}");
        let _ = lab.cnpilot(&["agent", "--down", "--pin-dir", pin]);
    }
    // One directory of both nodes' partitions.
    let merged = work.path().join("all");
    std::fs::create_dir_all(&merged).unwrap();
    for store in [&s1, &s2] {
        let status = std::process::Command::new("cp")
            .arg("-r")
            .args(
                std::fs::read_dir(store)
                    .unwrap()
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("node=")
                    }),
            )
            .arg(&merged)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let mut partitions: Vec<String> = std::fs::read_dir(&merged)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    partitions.sort();
    let mut want = vec![format!("node={node1}"), format!("node={node2}")];
    want.sort();
    assert_eq!(
        partitions, want,
        "each agent wrote its own node's partition"
    );
    let out = lab.cnpilot(&["learn", "--store", merged.to_str().unwrap(), "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let web_to_api = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["src_workload"] == "web" && r["dst_workload"] == "api" && r["dst_port"] == 8080)
        .unwrap_or_else(|| panic!("no web -> api row in {rows:#}"));
    let nodes: Vec<&str> = web_to_api["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        nodes.contains(&node1.as_str()) && nodes.contains(&node2.as_str()),
        "web (node 2) -> api (node 1) is seen leaving one node and entering the other: {web_to_api:#}"
    );
}
