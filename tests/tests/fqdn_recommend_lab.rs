//! The DNS half of the loop on real packets: a workload that reaches a
//! world host by name is recorded (its lookups through the agent's DNS
//! proxy, its connections at tc), `recommend` proposes `toFQDNs` for it —
//! and `toCIDR` for the host it reaches by address — proves both by
//! replay, and the proposal enforced lets the same traffic through while
//! the names' TTLs (5 s) expire and are learned again.

use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_e2e::steps::{recommend, record};
use cnpilot_e2e::{Lab, SeedAgent};

const SCENARIO: &str = r#"name: fqdn-shop
description: a checkout that calls its payment processor by name and a legacy host by address
namespaces:
  - name: kube-system
  - name: shop
workloads:
  - name: kube-dns
    namespace: kube-system
    labels: {k8s-app: kube-dns}
    servers:
      - {port: 53, protocol: udp, kind: dns}
  - name: checkout
    namespace: shop
    labels: {app: checkout}
    clients:
      - {target: "api.processor.example:443", rate: 4}
      - {target: "198.19.60.20:443", rate: 2}
world:
  - address: 198.19.50.10
    name: api.processor.example
    servers:
      - {port: 443, kind: echo}
  - address: 198.19.60.20
    servers:
      - {port: 443, kind: echo}
"#;

#[test]
fn a_host_reached_by_name_is_proposed_as_to_fqdns_and_enforced_across_ttls() {
    if !privileged_tests_enabled(
        "a_host_reached_by_name_is_proposed_as_to_fqdns_and_enforced_across_ttls",
    ) {
        return;
    }
    let lab = Lab::new();
    let work = tempfile::tempdir().unwrap();
    let scenario = work.path().join("fqdn-shop.yaml");
    std::fs::write(&scenario, SCENARIO).unwrap();
    assert!(lab
        .cnpilot(&["lab", "up", "--scenario", scenario.to_str().unwrap()])
        .status
        .success());

    let store = work.path().join("store");
    record(&lab, &store, None, 12);
    let proposed = work.path().join("proposed");
    let report = recommend(&lab, &store, None, &proposed);
    assert_eq!(report["replay"]["unexpected"], 0, "{report:#}");
    let checkout = std::fs::read_to_string(proposed.join("shop-cnpilot-checkout.yaml")).unwrap();
    assert!(
        checkout.contains("matchName: api.processor.example"),
        "no toFQDNs for the name the checkout looked up:\n{checkout}"
    );
    assert!(
        !checkout.contains("- 198.19.50.10/32"),
        "the named host is also a CIDR:\n{checkout}"
    );
    assert!(
        checkout.contains("198.19.60.20/32"),
        "the host reached by address is no CIDR:\n{checkout}"
    );
    assert!(checkout.contains("dns:"), "no rules.dns:\n{checkout}");

    // Enforced: 14 s of traffic spans two TTLs of the lab's answers (5 s),
    // each expiry re-learned from the checkout's next lookup.
    let agent = SeedAgent::start_with(&lab, work.path(), Some(&proposed), "enforce", &[]);
    let out = lab.cnpilot(&["lab", "traffic", "--duration", "14s"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "traffic failed:\n{text}");
    let events = agent.all_events();
    let drops: Vec<_> = events
        .iter()
        .filter(|e| e["verdict"] == "dropped" || e["verdict"] == "l7-denied")
        .collect();
    assert!(drops.is_empty(), "drops under the proposal: {drops:#?}");
    let lookups = events
        .iter()
        .filter(|e| e["type"] == "dns" && e["query"] == "api.processor.example")
        .count();
    assert!(lookups >= 2, "{lookups} lookups in 14 s with a 5 s TTL");
    let to_processor = events
        .iter()
        .filter(|e| e["type"] == "l3-l4" && e["dst"]["ip"] == "198.19.50.10")
        .count();
    assert!(
        to_processor > 10,
        "{to_processor} connections to the processor"
    );
}
