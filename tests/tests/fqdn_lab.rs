//! `toFQDNs` and `rules.dns` on real packets and real DNS answers: the
//! payments API may reach its processor by name only. Its queries go
//! through the agent's DNS proxy to the lab's kube-dns; the answer teaches
//! the datapath that 198.19.50.10 is `api.processor.example` for the
//! answer's TTL (the lab's responder says 5 s), and only then is a
//! connection to it allowed. A name `rules.dns` does not allow is answered
//! REFUSED in enforce.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use cnpilot_e2e::dns::{query, query_tcp, NOERROR, REFUSED};
use cnpilot_e2e::steps::{pod_netns, seed_lab};
use cnpilot_e2e::SeedAgent;
use serde_json::Value;

const PROCESSOR: &str = "198.19.50.10";
const INTAKE: &str = "198.19.162.10";

const POLICY: &str = r#"apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: payments-api-egress
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
      - port: "53"
        protocol: TCP
      rules:
        dns:
        - matchName: api.processor.example
  - toFQDNs:
    - matchName: api.processor.example
    toPorts:
    - ports:
      - port: "443"
        protocol: TCP
---
# The web frontend may reach the processor by name too, but its lookups
# pass no rules.dns rule: as on Cilium, its answers teach nothing.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-egress
  namespace: web
spec:
  endpointSelector: {}
  egress:
  - toEndpoints:
    - matchLabels:
        io.kubernetes.pod.namespace: kube-system
        k8s-app: kube-dns
    toPorts:
    - ports:
      - port: "53"
        protocol: UDP
  - toFQDNs:
    - matchName: api.processor.example
    toPorts:
    - ports:
      - port: "443"
        protocol: TCP
"#;

fn connects(netns: &str, addr: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "timeout", "2"])
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

#[test]
fn a_name_learned_from_dns_opens_its_address_for_its_ttl_only() {
    let Some((lab, work)) = seed_lab("fqdn_lab") else {
        return;
    };
    let policies = work.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(policies.join("payments.yaml"), POLICY).unwrap();
    let agent = SeedAgent::start_with(&lab, work.path(), Some(&policies), "enforce", &[]);
    let state = lab.state();
    let payments = pod_netns(&state, "payments");
    let dns: Ipv4Addr = state["dnsIp"].as_str().unwrap().parse().unwrap();

    // Before any answer, the processor is just a world address.
    assert!(
        !connects(&payments, PROCESSOR, 443),
        "reached {PROCESSOR} before resolving it\n{}",
        agent.stderr_text()
    );

    let answer = query(&payments, dns, "api.processor.example").unwrap();
    assert_eq!(answer.rcode, NOERROR);
    assert_eq!(answer.ips, vec![PROCESSOR.parse::<Ipv4Addr>().unwrap()]);
    let ev = wait_event(&agent, "the allowed query", |e| {
        e["type"] == "dns" && e["query"] == "api.processor.example"
    });
    assert_eq!(ev["verdict"], "allowed", "{ev}");
    assert_eq!(ev["rcode"], "NOERROR", "{ev}");
    assert_eq!(ev["answers"][0], PROCESSOR, "{ev}");
    assert_eq!(ev["ttl"], 5, "{ev}");
    assert_eq!(ev["proto"], "udp", "{ev}");

    assert!(
        connects(&payments, PROCESSOR, 443),
        "the resolved processor was not reachable\n{}",
        agent.stderr_text()
    );
    // An address no allowed name resolved to stays dropped.
    assert!(!connects(&payments, INTAKE, 443));
    wait_event(&agent, "the unnamed world address dropped", |e| {
        e["type"] == "l3-l4"
            && e["dst"]["ip"] == INTAKE
            && e["verdict"] == "dropped"
            && e["src"]["namespace"] == "payments"
    });

    // rules.dns: another name is refused in enforce, never forwarded.
    let refused = query(&payments, dns, "intake.datadoghq.example").unwrap();
    assert_eq!(refused.rcode, REFUSED);
    assert!(refused.ips.is_empty());
    let ev = wait_event(&agent, "the refused query", |e| {
        e["type"] == "dns" && e["query"] == "intake.datadoghq.example"
    });
    assert_eq!(ev["verdict"], "l7-denied", "{ev}");
    assert_eq!(ev["rcode"], "REFUSED", "{ev}");

    // Over TCP (what a resolver falls back to) the same rules hold: the
    // allowed name is answered (and refreshes its TTL), the other refused.
    let refused = query_tcp(&payments, dns, "intake.datadoghq.example").unwrap();
    assert_eq!((refused.rcode, refused.ips.len()), (REFUSED, 0));
    let ev = wait_event(&agent, "the refused TCP query", |e| {
        e["type"] == "dns" && e["query"] == "intake.datadoghq.example" && e["proto"] == "tcp"
    });
    assert_eq!(ev["verdict"], "l7-denied", "{ev}");
    let answer = query_tcp(&payments, dns, "api.processor.example").unwrap();
    assert_eq!(answer.rcode, NOERROR);
    assert_eq!(answer.ips, vec![PROCESSOR.parse::<Ipv4Addr>().unwrap()]);
    let resolved_at = Instant::now();
    let ev = wait_event(&agent, "the allowed TCP query", |e| {
        e["type"] == "dns" && e["query"] == "api.processor.example" && e["proto"] == "tcp"
    });
    assert_eq!(
        (&ev["verdict"], &ev["rcode"]),
        (&"allowed".into(), &"NOERROR".into()),
        "{ev}"
    );
    assert!(connects(&payments, PROCESSOR, 443));

    // The TTL (5 s) passes: the address is a bare world address again.
    let expired = resolved_at + Duration::from_secs(7);
    std::thread::sleep(expired.saturating_duration_since(Instant::now()));
    assert!(
        !connects(&payments, PROCESSOR, 443),
        "{PROCESSOR} still reachable after its name's TTL\n{}",
        agent.stderr_text()
    );

    // A lookup no rules.dns rule let through (web's: visibility only)
    // teaches toFQDNs nothing, as on Cilium.
    let web = pod_netns(&state, "web");
    let answer = query(&web, dns, "api.processor.example").unwrap();
    assert_eq!(answer.ips, vec![PROCESSOR.parse::<Ipv4Addr>().unwrap()]);
    wait_event(&agent, "web's lookup", |e| {
        e["type"] == "dns"
            && e["query"] == "api.processor.example"
            && e["src"]["namespace"] == "web"
    });
    assert!(
        !connects(&web, PROCESSOR, 443),
        "a name learned without a DNS rule opened {PROCESSOR}\n{}",
        agent.stderr_text()
    );

    // In audit the same things pass, recorded as what enforce would do.
    let flip = lab.cnpilot(&["mode", "-n", "payments", "audit", "--pin-dir", agent.pin()]);
    assert_eq!(flip.status.code(), Some(0), "mode -n payments audit");
    let answer = query(&payments, dns, "intake.datadoghq.example").unwrap();
    assert_eq!(answer.rcode, NOERROR);
    assert_eq!(answer.ips, vec![INTAKE.parse::<Ipv4Addr>().unwrap()]);
    wait_event(&agent, "the would-be-refused query", |e| {
        e["type"] == "dns"
            && e["query"] == "intake.datadoghq.example"
            && e["verdict"] == "l7-would-deny"
    });
    assert!(connects(&payments, INTAKE, 443));
}
