//! The lab on real network namespaces (root tier): `cnpilot lab up` on the
//! seed scenario, DNS and HTTP from inside pods, traffic, and `lab down`
//! leaving nothing behind, also after a crash.

use std::time::Instant;

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::{lab_server_pids, Lab};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn seed_lab_serves_the_articles_commands_and_comes_down_clean() {
    if !privileged_tests_enabled("seed_lab_serves_the_articles_commands_and_comes_down_clean") {
        return;
    }
    let lab = Lab::new();
    let started = Instant::now();
    let up = lab.cnpilot(&["lab", "up", "--scenario", "seed"]);
    assert_eq!(up.status.code(), Some(0), "lab up failed");
    let up_time = started.elapsed();
    eprintln!("lab up took {up_time:?}");
    assert!(
        up_time.as_secs() < 10,
        "lab up must take seconds, took {up_time:?}"
    );

    // State: every pod has an address from 198.18.0.0/16, a veth that fits
    // an interface name and its ifindex in the node netns.
    let state = lab.state();
    assert_eq!(state["node"]["netns"], format!("{}-node", lab.prefix));
    let pods = state["pods"].as_array().unwrap();
    assert!(
        pods.len() >= 12,
        "seed has at least 12 pods, got {}",
        pods.len()
    );
    for pod in pods {
        assert!(pod["ip"].as_str().unwrap().starts_with("198.18."), "{pod}");
        if pod["hostNetwork"] == false {
            let veth = pod["hostVeth"].as_str().unwrap();
            assert!(
                veth.starts_with(&format!("{}v", lab.prefix)) && veth.len() <= 15,
                "{veth}"
            );
            assert!(pod["hostIfindex"].as_u64().unwrap() > 1, "{pod}");
        }
    }
    let inventory: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(lab.dir.path().join("inventory.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(inventory["kind"], "List");

    // A second `lab up` with the same prefix is refused, and changes nothing.
    let again = lab.cnpilot(&["lab", "up"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));

    // DNS inside a pod: the short and the full name, through kube-dns.
    let api_ips: Vec<String> = pods
        .iter()
        .filter(|p| p["workload"] == "payments-api")
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    for name in [
        "payments-api.payments",
        "payments-api.payments.svc.cluster.local",
    ] {
        let out = lab.cnpilot(&[
            "lab",
            "exec",
            "web/frontend-app",
            "--",
            "getent",
            "ahostsv4",
            name,
        ]);
        assert_eq!(out.status.code(), Some(0), "{name} does not resolve");
        let text = stdout(&out);
        assert!(
            api_ips.iter().any(|ip| text.contains(ip.as_str())),
            "{name} -> {text}, want one of {api_ips:?}"
        );
    }
    let missing = lab.cnpilot(&[
        "lab",
        "exec",
        "web/frontend-app",
        "--",
        "getent",
        "ahostsv4",
        "nope.payments",
    ]);
    assert_ne!(
        missing.status.code(),
        Some(0),
        "an unknown name must not resolve"
    );

    // The article's command, unchanged.
    let curl = |pod: &str, args: &[&str]| {
        let mut full = vec![
            "lab",
            "exec",
            pod,
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ];
        full.extend_from_slice(args);
        let out = lab.cnpilot(&full);
        assert_eq!(out.status.code(), Some(0), "curl failed");
        stdout(&out)
    };
    assert_eq!(
        curl(
            "web/frontend-app",
            &[
                "-X",
                "POST",
                "http://payments-api.payments:8080/api/v1/charges"
            ]
        ),
        "200"
    );
    assert_eq!(
        curl(
            "web/frontend-app",
            &["http://payments-api.payments:8080/no/such/path"]
        ),
        "404"
    );
    assert_eq!(
        curl("tenant-a/worker", &["http://app.tenant-a:8080/api/items"]),
        "200"
    );
    // A pod on the node's network reaches pods, and pods reach it.
    assert_eq!(
        curl(
            "datadog/datadog-agent",
            &["http://app.tenant-b:8080/metrics"]
        ),
        "200"
    );
    assert_eq!(
        curl(
            "monitoring/prometheus",
            &["http://datadog-agent.datadog:8126/metrics"]
        ),
        "200"
    );

    // exec passes the command's exit code through.
    let code = lab.cnpilot(&[
        "lab",
        "exec",
        "ops/finance-tool",
        "--",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(code.status.code(), Some(7));

    // Traffic: every client of the scenario succeeds with no policy loaded.
    let traffic = lab.cnpilot(&["lab", "traffic", "--duration", "2s", "-o", "json"]);
    assert_eq!(traffic.status.code(), Some(0));
    let reports: serde_json::Value = serde_json::from_slice(&traffic.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert!(reports.len() >= 20, "{} client reports", reports.len());
    let worker_to_app = reports
        .iter()
        .find(|r| {
            r["namespace"] == "tenant-a"
                && r["target"] == "app.tenant-a:8080"
                && r["request"] == "GET /api/items"
        })
        .expect("tenant-a worker -> app");
    // 4 per second for 2 seconds.
    assert!(
        worker_to_app["ok"].as_u64().unwrap() >= 6,
        "{worker_to_app}"
    );
    for r in reports {
        assert_eq!(r["failed"], 0, "{r}");
        assert!(r["ok"].as_u64().unwrap() >= 1, "{r}");
    }

    let status = lab.cnpilot(&["lab", "status", "-o", "json"]);
    assert_eq!(status.status.code(), Some(0), "a server is unhealthy");

    let started = Instant::now();
    let down = lab.cnpilot(&["lab", "down"]);
    assert_eq!(down.status.code(), Some(0));
    eprintln!("lab down took {:?}", started.elapsed());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    // Nothing left to remove is not an error.
    assert_eq!(lab.cnpilot(&["lab", "down"]).status.code(), Some(0));
}

#[test]
fn crashed_lab_is_swept_by_prefix() {
    if !privileged_tests_enabled("crashed_lab_is_swept_by_prefix") {
        return;
    }
    let lab = Lab::new();
    assert_eq!(lab.cnpilot(&["lab", "up"]).status.code(), Some(0));
    let pids = lab_server_pids(&lab.prefix);
    assert!(pids.len() >= 5, "servers running: {pids:?}");
    // A crash: one server killed, the state file gone, the rest still running.
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    std::fs::remove_file(lab.state_path()).unwrap();
    assert!(!lab.leftovers().is_empty());
    // Another lab with another prefix must survive this one's sweep.
    let bystander = Lab::new();
    assert_eq!(bystander.cnpilot(&["lab", "up"]).status.code(), Some(0));

    let down = lab.cnpilot(&["lab", "down"]);
    assert_eq!(down.status.code(), Some(0));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(bystander.state_path().exists());
    assert_eq!(
        bystander.cnpilot(&["lab", "status"]).status.code(),
        Some(0),
        "the bystander lab was touched"
    );
    assert_eq!(bystander.cnpilot(&["lab", "down"]).status.code(), Some(0));
    assert_eq!(bystander.leftovers(), Vec::<String>::new());
}

#[test]
fn bad_scenario_is_a_clear_error_with_file_and_line() {
    if !privileged_tests_enabled("bad_scenario_is_a_clear_error_with_file_and_line") {
        return;
    }
    let lab = Lab::new();
    let file = lab.dir.path().join("bad.yaml");
    std::fs::write(&file, "name: bad\nnamespaces:\n  - name: a\nworkloads:\n  - name: w\n    namespace: a\n    replicaz: 2\n").unwrap();
    let out = lab.cnpilot(&["lab", "up", "--scenario", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:7:", file.display())) && err.contains("replicaz"),
        "{err}"
    );
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn remote_node_pods_reach_the_first_node_across_the_node_link() {
    if !privileged_tests_enabled("remote_node_pods_reach_the_first_node_across_the_node_link") {
        return;
    }
    let lab = Lab::new();
    assert_eq!(
        lab.cnpilot(&["lab", "up", "--scenario", "two-nodes"])
            .status
            .code(),
        Some(0)
    );
    let state = lab.state();
    let remote = &state["remoteNodes"][0];
    assert_eq!(remote["netns"], format!("{}-node2", lab.prefix));
    assert_eq!(remote["ip"], "198.18.255.2");
    let web = state["pods"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["workload"] == "web")
        .unwrap();
    assert_eq!(web["node"], remote["name"], "web runs on node 2");
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        "shop/web",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "http://api.shop:8080/orders",
    ]);
    assert_eq!(stdout(&out), "200");
    // The hostNetwork exporter on node 2 answers with node 2's address.
    let out = lab.cnpilot(&[
        "lab",
        "exec",
        "monitoring/prometheus",
        "--",
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "5",
        "http://198.18.255.2:9100/metrics",
    ]);
    assert_eq!(stdout(&out), "200");
    assert_eq!(lab.cnpilot(&["lab", "down"]).status.code(), Some(0));
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
