//! HTTP rules toward a `toFQDNs` peer, on real packets: the payments API
//! may POST its series to `intake.datadoghq.example` (a world host of the
//! seed lab, reached by name) and nothing else there. Once the name is
//! resolved, the connection goes through the agent's HTTP proxy at the
//! pod's egress: the allowed request gets the intake's 202, another path
//! the proxy's 403; before the name is resolved (or after its TTL) the
//! connection itself is dropped.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use cnpilot_e2e::dns::{query, NOERROR};
use cnpilot_e2e::steps::{pod_netns, seed_lab};
use cnpilot_e2e::SeedAgent;

const INTAKE: &str = "198.19.162.10";

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: payments-api-metrics
  namespace: payments
spec:
  endpointSelector:
    matchLabels:
      app: payments-api
  egress:
  - toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
      rules:
        dns:
        - matchName: intake.datadoghq.example
  - toFQDNs:
    - matchName: intake.datadoghq.example
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: POST
          path: /api/v2/series
"#;

/// The HTTP status curl got from `netns` (`000`: no connection).
fn http_status(netns: &str, method: &str, path: &str) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
        ])
        .args(["-w", "%{http_code}", "-X", method])
        .arg(format!("http://{INTAKE}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn http_rules_apply_to_a_peer_reached_by_name() {
    let Some((lab, work)) = seed_lab("fqdn_http_lab") else {
        return;
    };
    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("payments.yaml"), POLICY).unwrap();
    let agent = SeedAgent::start_with(&lab, work.path(), Some(&policies), "enforce", &[]);
    let state = lab.state();
    let payments = pod_netns(&state, "payments");
    let dns: Ipv4Addr = state["dnsIp"].as_str().unwrap().parse().unwrap();

    assert_eq!(
        http_status(&payments, "POST", "/api/v2/series"),
        "000",
        "reached the intake before resolving it\n{}",
        agent.stderr_text()
    );

    let answer = query(&payments, dns, "intake.datadoghq.example").unwrap();
    assert_eq!(answer.rcode, NOERROR);
    assert_eq!(answer.ips, vec![INTAKE.parse::<Ipv4Addr>().unwrap()]);
    let resolved_at = Instant::now();
    assert_eq!(
        http_status(&payments, "POST", "/api/v2/series"),
        "202",
        "the allowed request to the resolved intake\n{}",
        agent.stderr_text()
    );
    assert_eq!(
        http_status(&payments, "GET", "/api/v1/validate"),
        "403",
        "a request no HTTP rule allows\n{}",
        agent.stderr_text()
    );
    let events = agent.all_events();
    let http = |path: &str| {
        events
            .iter()
            .find(|e| e["type"] == "http" && e["path"] == path)
            .cloned()
    };
    let allowed = http("/api/v2/series").expect("the allowed request's event");
    assert_eq!(allowed["verdict"], "allowed", "{allowed}");
    let denied = http("/api/v1/validate").expect("the denied request's event");
    assert_eq!(denied["verdict"], "l7-denied", "{denied}");

    // The lab's responder gives a 5 s TTL: after it, no connection at all.
    std::thread::sleep(
        (resolved_at + Duration::from_secs(7)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(
        http_status(&payments, "POST", "/api/v2/series"),
        "000",
        "the intake still reachable after its name's TTL\n{}",
        agent.stderr_text()
    );
}
