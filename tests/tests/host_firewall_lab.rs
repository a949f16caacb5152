//! The host firewall on the seed lab (the article's third pattern): the
//! node's own traffic — the hostNetwork datadog agent's — is observed on the
//! node's uplink with identity `host`, judged by the article's
//! `host-firewall-policy` (a CCNP with `nodeSelector: {}`), and enforced
//! after one `cnpilot mode --node` flip, while pods' traffic across the same
//! uplink is left to the pods' own policies.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cnpilot_e2e::steps::{recommend, record_with, seed_lab};
use cnpilot_e2e::{workspace_root, SeedAgent};
use serde_json::Value;

/// The intake (allowed by the policy's toCIDR) and another world host.
const INTAKE: &str = "198.19.162.10";
const OTHER_WORLD: &str = "198.19.50.10";

/// The seed policies, with the host policy's public CIDRs (the article's
/// Datadog ranges) mapped onto the lab's world, as the lab maps the
/// intake's address: lab traffic never leaves 198.18.0.0/15.
fn lab_policies(dir: &Path) {
    let seed = workspace_root().join("cli/policies/seed");
    for entry in std::fs::read_dir(&seed).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replace("162.244.50.0/24", "198.19.162.0/24")
            .replace("162.213.130.0/24", "198.19.163.0/24");
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
}

/// A TCP connection from `netns` to `addr:port` within `wait`.
fn connects(netns: &str, addr: &str, port: u16, wait: Duration) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "timeout"])
        .arg(format!("{}", wait.as_secs_f64()))
        .args(["bash", "-c", &format!("exec 3<>/dev/tcp/{addr}/{port}")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn wait_event(agent: &SeedAgent, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ev) = agent.all_events().into_iter().find(|e| f(e)) {
            return ev;
        }
        assert!(
            Instant::now() < deadline,
            "no event: {what}\nagent:\n{}",
            agent.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn host_egress_to(ev: &Value, addr: &str, verdict: &str) -> bool {
    ev["type"] == "l3-l4"
        && ev["src"]["identity"] == 1
        && ev["src"]["name"] == "host"
        && ev["dst"]["ip"] == addr
        && ev["direction"] == "egress"
        && ev["verdict"] == verdict
}

#[test]
fn the_node_is_observed_then_enforced_by_its_ccnp_and_pods_are_unaffected() {
    let Some((lab, work)) = seed_lab("host_firewall_lab") else {
        return;
    };
    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    lab_policies(&policies);
    let agent = SeedAgent::start_with(
        &lab,
        work.path(),
        Some(&policies),
        "audit",
        &["--host-firewall", "auto"],
    );
    let state = lab.state();
    let node_ns = state["node"]["netns"].as_str().unwrap().to_string();
    let node = state["node"]["name"].as_str().unwrap().to_string();
    let uplink = state["node"]["uplink"].as_str().unwrap().to_string();
    assert!(
        agent
            .stderr_text()
            .contains(&format!("host firewall on {uplink}")),
        "{}",
        agent.stderr_text()
    );
    let pod_ns = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == "tenant-a" && p["host_network"] != true)
        .and_then(|p| p["netns"].as_str())
        .unwrap()
        .to_string();
    let pin = agent.pin();
    let mode = |m: &str| {
        let out = lab.cnpilot(&["mode", "--node", &node, m, "--pin-dir", pin]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quick = Duration::from_secs(2);

    // Audit: the node reaches both; the one its policy does not allow is a
    // would-drop, the intake is forwarded, both with identity `host`.
    assert!(connects(&node_ns, INTAKE, 443, quick));
    assert!(connects(&node_ns, OTHER_WORLD, 443, quick));
    wait_event(&agent, "host -> intake forwarded", |e| {
        host_egress_to(e, INTAKE, "forwarded")
    });
    let would = wait_event(&agent, "host -> other world would-drop", |e| {
        host_egress_to(e, OTHER_WORLD, "would-drop")
    });
    assert_eq!(would["reason"], "default-deny", "{would}");

    // One map update: the node enforces.
    assert!(mode("enforce").contains("audit -> enforce"));
    let started = Instant::now();
    assert!(
        connects(&node_ns, INTAKE, 443, quick),
        "the intake (toCIDR) is allowed"
    );
    assert!(
        connects(&node_ns, INTAKE, 80, quick),
        "toCIDR without ports allows every port"
    );
    assert!(
        !connects(&node_ns, OTHER_WORLD, 443, quick),
        "another world address is dropped"
    );
    wait_event(&agent, "host -> other world dropped", |e| {
        host_egress_to(e, OTHER_WORLD, "dropped")
    });
    eprintln!("enforce checks took {:?}", started.elapsed());

    // A pod's traffic crosses the same uplink and is not the host's: its
    // namespace is in audit, so it passes.
    assert!(
        connects(&pod_ns, OTHER_WORLD, 443, quick),
        "a pod behind the enforcing node is unaffected"
    );
    assert!(
        !agent
            .all_events()
            .iter()
            .any(|e| e["src"]["identity"] == 1 && e["src"]["ip"] != state["node"]["ip"]),
        "only the node's own address is ever the host"
    );

    // And back: audit lets it through again.
    assert!(mode("audit").contains("enforce -> audit"));
    assert!(connects(&node_ns, OTHER_WORLD, 443, quick));
}

/// The test's own host ingress (the article's host policy has none): the
/// node admits tenant-a's worker on `HOST_OPEN` only. The worker's own
/// egress allows the host, so only the host's side can deny it.
const HOST_INGRESS: &str = r#"apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: host-ingress-lab
spec:
  nodeSelector: {}
  ingress:
  - fromEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: tenant-a
        app: worker
    toPorts:
    - ports:
      - port: "7101"
        protocol: TCP
"#;
const WORKER_TO_HOST: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: worker-to-node
  namespace: tenant-a
spec:
  endpointSelector:
    matchLabels:
      app: worker
  egress:
  - toEntities:
    - host
"#;
const HOST_OPEN: u16 = 7101;
const HOST_CLOSED: u16 = 7102;

fn pod<'a>(state: &'a Value, namespace: &str, workload: &str) -> &'a Value {
    state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["namespace"] == namespace && p["workload"] == workload)
        .unwrap_or_else(|| panic!("no {namespace}/{workload} in the lab"))
}

/// A connection between the node and a pod on it crosses no node device:
/// the pod's veth judges it by the host's policy too (Cilium: host egress
/// before the pod's ingress, the pod's egress before the host's ingress),
/// under the node's own mode.
#[test]
fn host_and_local_pod_connections_are_judged_by_the_hosts_policy_under_the_nodes_mode() {
    let Some((lab, work)) = seed_lab("host_firewall_lab (host <-> local pod)") else {
        return;
    };
    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    lab_policies(&policies);
    std::fs::write(policies.join("host-ingress-lab.yaml"), HOST_INGRESS).unwrap();
    std::fs::write(policies.join("worker-to-node.yaml"), WORKER_TO_HOST).unwrap();
    let agent = SeedAgent::start_with(
        &lab,
        work.path(),
        Some(&policies),
        "audit",
        &["--host-firewall", "auto"],
    );
    let state = lab.state();
    let node_ns = state["node"]["netns"].as_str().unwrap().to_string();
    let node = state["node"]["name"].as_str().unwrap().to_string();
    let node_ip = state["node"]["ip"].as_str().unwrap().to_string();
    let app_ip = pod(&state, "tenant-a", "app")["ip"]
        .as_str()
        .unwrap()
        .to_string();
    let worker_ns = pod(&state, "tenant-a", "worker")["netns"]
        .as_str()
        .unwrap()
        .to_string();
    // Listeners on the node for the worker to reach (the handshake
    // completes in the kernel's backlog: nothing needs to accept).
    let _listeners: Vec<std::net::TcpListener> = [HOST_OPEN, HOST_CLOSED]
        .into_iter()
        .map(|port| {
            cnpilot_bpf::netns::run_in(&cnpilot_bpf::netns::named(&node_ns), || {
                std::net::TcpListener::bind(("0.0.0.0", port))
            })
            .unwrap()
            .unwrap()
        })
        .collect();
    let pin = agent.pin();
    let mode = |m: &str| {
        let out = lab.cnpilot(&["mode", "--node", &node, m, "--pin-dir", pin]);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quick = Duration::from_secs(2);
    let host_to_app = |ev: &Value, verdict: &str| {
        ev["src"]["identity"] == 1
            && ev["dst"]["ip"] == app_ip.as_str()
            && ev["dst"]["port"] == 8080
            && ev["verdict"] == verdict
    };
    let worker_to_host = |ev: &Value, port: u16, verdict: &str| {
        ev["dst"]["identity"] == 1
            && ev["dst"]["ip"] == node_ip.as_str()
            && ev["dst"]["port"] == port
            && ev["src"]["name"] == "tenant-a/worker"
            && ev["verdict"] == verdict
    };

    // Audit (the node starts there): the host's egress allows no pod port,
    // its ingress only HOST_OPEN; both pass, the host's denials as
    // would-drops named as the host's.
    assert!(connects(&node_ns, &app_ip, 8080, quick));
    let would = wait_event(&agent, "host -> tenant-a/app would-drop", |e| {
        host_to_app(e, "would-drop")
    });
    assert_eq!(would["reason"], "host-default-deny", "{would}");
    assert!(connects(&worker_ns, &node_ip, HOST_CLOSED, quick));
    let would = wait_event(&agent, "worker -> host (closed port) would-drop", |e| {
        worker_to_host(e, HOST_CLOSED, "would-drop")
    });
    assert_eq!(would["reason"], "host-default-deny", "{would}");
    assert!(connects(&worker_ns, &node_ip, HOST_OPEN, quick));
    wait_event(&agent, "worker -> host (open port) forwarded", |e| {
        worker_to_host(e, HOST_OPEN, "forwarded")
    });

    // The node enforces; tenant-a stays in audit.
    assert!(mode("enforce").contains("audit -> enforce"));
    assert!(
        !connects(&node_ns, &app_ip, 8080, quick),
        "the host's egress allows no tenant-a port"
    );
    wait_event(&agent, "host -> tenant-a/app dropped", |e| {
        host_to_app(e, "dropped")
    });
    assert!(
        !connects(&worker_ns, &node_ip, HOST_CLOSED, quick),
        "the host's ingress does not admit this port"
    );
    wait_event(&agent, "worker -> host (closed port) dropped", |e| {
        worker_to_host(e, HOST_CLOSED, "dropped")
    });
    assert!(
        connects(&worker_ns, &node_ip, HOST_OPEN, quick),
        "the host's ingress admits the worker here"
    );
    assert!(
        connects(&worker_ns, &app_ip, 8080, quick),
        "pod to pod is not the host's"
    );

    // Back to audit: the node's own mode lets it through again.
    assert!(mode("audit").contains("enforce -> audit"));
    assert!(connects(&node_ns, &app_ip, 8080, quick));
}

/// Host flows are flow records with identity `host`: recorded with the
/// host firewall on, the seed lab's hostNetwork agent's traffic to the
/// intake becomes a proposed host policy (a CCNP with `nodeSelector`) that
/// allows exactly it.
#[test]
fn recorded_host_flows_become_a_proposed_host_policy() {
    let Some((lab, work)) = seed_lab("host_firewall_lab (recommend)") else {
        return;
    };
    let store = work.path().join("store");
    record_with(&lab, &store, None, 12, &["--host-firewall", "auto"]);
    let out = work.path().join("proposed");
    let report = recommend(&lab, &store, None, &out);
    let host_policy = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .find(|text| text.contains("name: cnpilot-host"))
        .unwrap_or_else(|| panic!("no cnpilot-host policy proposed; report: {report}"));
    assert!(
        host_policy.contains("kind: CiliumClusterwideNetworkPolicy"),
        "{host_policy}"
    );
    assert!(host_policy.contains("nodeSelector: {}"), "{host_policy}");
    assert!(
        host_policy.contains(&format!("{INTAKE}/32")),
        "the datadog agent's intake is in the host's egress:\n{host_policy}"
    );
    assert!(
        !host_policy.contains(OTHER_WORLD),
        "nothing the node did not do:\n{host_policy}"
    );
}
