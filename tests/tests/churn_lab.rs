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
    let payments = lab.state()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "payments")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .unwrap();
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
