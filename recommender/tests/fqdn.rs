//! toFQDNs and rules.dns: DNS answers in the ipcache, what selects them, and
//! the DNS proxy's half of a verdict.

use std::net::Ipv4Addr;

use cnpilot_bpf::maps::{action, identity, Direction, PolicyKey, IPCACHE_F_LOCAL_ENDPOINT};
use cnpilot_recommender::compile::{FqdnInput, CIDR_IDENTITY_BASE, FQDN_IDENTITY_BASE};
use cnpilot_recommender::model::{load_str, LoadError};
use cnpilot_recommender::{CompiledPolicy, IdentityInput, Outcome, Verdict};

const APP: u32 = 256;
const DNS: u32 = 257;
const API: u32 = FQDN_IDENTITY_BASE;
const CDN: u32 = FQDN_IDENTITY_BASE + 1;
const OTHER: u32 = FQDN_IDENTITY_BASE + 2;
const DENIED_CDN: u32 = FQDN_IDENTITY_BASE + 3;
const UDP: u8 = 17;
const TCP: u8 = 6;

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEndpoints: [{matchLabels: {app: dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: api.processor.example
        - matchPattern: "*.cdn.example"
  - toFQDNs: [{matchName: api.processor.example}, {matchPattern: "*.cdn.example"}]
    toPorts: [{ports: [{port: "443", protocol: TCP}]}]
  - toCIDRSet:
    - cidr: 203.0.113.0/24
      except: [203.0.113.0/28]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  egressDeny:
  - toCIDR: [198.51.100.20/32]
"#;

fn pod(id: u32, app: &str, addr: [u8; 4]) -> IdentityInput {
    IdentityInput {
        id,
        namespace: "ns".into(),
        labels: [("app".to_string(), app.to_string())].into(),
        addrs: vec![Ipv4Addr::from(addr)],
        ..Default::default()
    }
}

fn answer(addr: [u8; 4], id: u32, names: &[&str]) -> FqdnInput {
    FqdnInput {
        addr: Ipv4Addr::from(addr),
        id,
        names: names.iter().map(|n| n.to_string()).collect(),
    }
}

fn compiled(fqdns: &[FqdnInput]) -> CompiledPolicy {
    let set = load_str(POLICY, "p.yaml").unwrap();
    let pods = [
        pod(APP, "app", [10, 0, 0, 1]),
        pod(DNS, "dns", [10, 0, 0, 53]),
    ];
    CompiledPolicy::compile_with_fqdns(&set, &pods, None, fqdns)
}

fn answers() -> Vec<FqdnInput> {
    vec![
        answer([203, 0, 113, 10], API, &["api.processor.example"]),
        answer([203, 0, 113, 100], CDN, &["edge.cdn.example"]),
        answer([198, 51, 100, 20], DENIED_CDN, &["other.cdn.example"]),
        answer([192, 0, 2, 9], OTHER, &["unrelated.example"]),
        // A pod's address: its endpoint identity stays.
        answer([10, 0, 0, 53], OTHER, &["api.processor.example"]),
    ]
}

fn egress(c: &CompiledPolicy, peer: u32, proto: u8, port: u16) -> Outcome {
    c.check(Direction::Egress, APP, peer, proto, port, None)
        .outcome
}

#[test]
fn answers_are_world_slash_32s_in_the_ipcache() {
    let c = compiled(&answers());
    let entries = c.ipcache_entries();
    let find = |a: [u8; 4]| {
        entries
            .iter()
            .filter(|(k, _)| k.prefixlen == 32 && k.addr == u32::from(Ipv4Addr::from(a)).to_be())
            .map(|(_, v)| (v.identity, v.flags))
            .collect::<Vec<_>>()
    };
    assert_eq!(find([203, 0, 113, 10]), [(API, 0)]);
    assert_eq!(find([192, 0, 2, 9]), [(OTHER, 0)]);
    // The pod keeps its endpoint identity, and only one entry.
    assert_eq!(find([10, 0, 0, 53]), [(DNS, IPCACHE_F_LOCAL_ENDPOINT)]);
    // The answer's /32 replaces the policy's 198.51.100.20/32 prefix.
    assert_eq!(find([198, 51, 100, 20]), [(DENIED_CDN, 0)]);
    assert_eq!(c.identity_of_addr(Ipv4Addr::new(203, 0, 113, 10)), API);
    assert_eq!(c.identity_of_addr(Ipv4Addr::new(10, 0, 0, 53)), DNS);
    let cidr = c.identity_of_addr(Ipv4Addr::new(203, 0, 113, 11));
    assert!((CIDR_IDENTITY_BASE..FQDN_IDENTITY_BASE).contains(&cidr));
    assert_eq!(
        c.identity_of_addr(Ipv4Addr::new(8, 8, 8, 8)),
        identity::WORLD
    );
}

#[test]
fn to_fqdns_selects_answers_by_name_and_cidr_rules_by_address() {
    let c = compiled(&answers());
    assert_eq!(egress(&c, API, TCP, 443), Outcome::Allowed);
    assert_eq!(egress(&c, CDN, TCP, 443), Outcome::Allowed);
    assert_eq!(egress(&c, OTHER, TCP, 443), Outcome::DefaultDeny);
    assert_eq!(egress(&c, identity::WORLD, TCP, 443), Outcome::DefaultDeny);
    // 203.0.113.100 is in the CIDR set; 203.0.113.10 is in its except.
    assert_eq!(egress(&c, CDN, TCP, 80), Outcome::Allowed);
    assert_eq!(egress(&c, API, TCP, 80), Outcome::DefaultDeny);
}

#[test]
fn a_deny_cidr_covers_the_answers_inside_it() {
    let c = compiled(&answers());
    // 198.51.100.20 answers for an allowed name, and egressDeny covers it.
    let side = c.check(Direction::Egress, APP, DENIED_CDN, TCP, 443, None);
    assert_eq!(side.outcome, Outcome::DenyRule);
    assert_eq!(
        c.rule(side.rule.unwrap()).unwrap().path,
        "spec.egressDeny[0]"
    );
}

#[test]
fn without_answers_to_fqdns_allows_nothing_but_still_default_denies() {
    let c = compiled(&[]);
    assert_eq!(egress(&c, identity::WORLD, TCP, 443), Outcome::DefaultDeny);
    assert!(c
        .ipcache_entries()
        .iter()
        .all(|(_, v)| v.identity < FQDN_IDENTITY_BASE));
    assert!(c.fqdn_selects("api.processor.example"));
    assert!(c.fqdn_selects("EDGE.cdn.example."));
    assert!(!c.fqdn_selects("cdn.example"));
    assert!(!c.fqdn_selects("unrelated.example"));
}

#[test]
fn rules_dns_redirects_udp_and_tcp_to_the_dns_proxy() {
    let mut c = compiled(&answers());
    c.set_proxy_port(15001);
    c.set_dns_proxy_port(15053);
    let key = |proto| PolicyKey {
        subject: APP,
        peer: DNS,
        dport: 53,
        proto,
        direction: Direction::Egress as u8,
    };
    let entries: std::collections::BTreeMap<_, _> = c.policy_entries().into_iter().collect();
    let udp = entries[&key(UDP)];
    assert_eq!((udp.action, udp.proxy_port), (action::REDIRECT, 15053));
    let tcp = entries[&key(TCP)];
    assert_eq!((tcp.action, tcp.proxy_port), (action::REDIRECT, 15053));
    // The HTTP proxy's port does not touch DNS entries, and back.
    c.set_proxy_port(15002);
    assert_eq!(
        c.policy_entries()
            .into_iter()
            .find(|(k, _)| *k == key(UDP))
            .map(|(_, v)| v.proxy_port),
        Some(15053)
    );
    // `protocol: ANY` also keys SCTP, which the proxy does not answer.
    let warning = c
        .warnings()
        .iter()
        .find(|w| w.contains("rules.dns over SCTP"))
        .expect("a warning for DNS over SCTP");
    assert!(warning.contains("spec.egress[0]"), "{warning}");
    assert!(!c.warnings().iter().any(|w| w.contains("over TCP")));
    let rule = c.rule(tcp.rule_id).unwrap();
    assert_eq!(rule.unmodelled, ["rules.dns"]);
}

#[test]
fn rules_dns_without_tcp_is_fully_modelled() {
    let text = POLICY.replace("protocol: ANY", "protocol: UDP");
    let set = load_str(&text, "p.yaml").unwrap();
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    let c = CompiledPolicy::compile(&set, &[pod(APP, "app", [10, 0, 0, 1])], None);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    assert!((0..)
        .map_while(|i| c.rule(i))
        .all(|r| r.unmodelled.is_empty()));
}

#[test]
fn to_fqdns_without_a_dns_rule_is_warned_about_once() {
    let text = POLICY.replace(
        "      rules:\n        dns:\n        - matchName: api.processor.example\n        - matchPattern: \"*.cdn.example\"\n",
        "",
    );
    assert!(!text.contains("dns:"), "{text}");
    let set = load_str(&text, "p.yaml").unwrap();
    let c = CompiledPolicy::compile(&set, &[pod(APP, "app", [10, 0, 0, 1])], None);
    let warned: Vec<&String> = c
        .warnings()
        .iter()
        .filter(|w| w.contains("toFQDNs, but no rules.dns"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", c.warnings());
    assert!(warned[0].contains("spec.egress[1]"), "{}", warned[0]);
    // With its DNS rule, no such warning.
    let c = compiled(&[]);
    assert!(!c.warnings().iter().any(|w| w.contains("toFQDNs, but")));
}

#[test]
fn check_dns_lets_the_query_name_decide() {
    let c = compiled(&answers());
    let dns = |proto, port, q: &str| c.check_dns(Direction::Egress, APP, DNS, proto, port, q);
    let allowed = dns(UDP, 53, "API.processor.example.");
    assert_eq!(allowed.outcome, Outcome::L7Allowed);
    assert_eq!(
        c.rule(allowed.rule.unwrap()).unwrap().path,
        "spec.egress[0]"
    );
    assert_eq!(dns(UDP, 53, "x.cdn.example").outcome, Outcome::L7Allowed);
    let denied = dns(UDP, 53, "evil.example");
    assert_eq!(denied.outcome, Outcome::L7Denied);
    assert_eq!(c.rule(denied.rule.unwrap()).unwrap().path, "spec.egress[0]");
    assert_eq!(dns(UDP, 53, "a.b.cdn.example").outcome, Outcome::L7Denied);
    // Over TCP the name decides the same way; another port is not
    // allowed at all.
    assert_eq!(dns(TCP, 53, "evil.example").outcome, Outcome::L7Denied);
    assert_eq!(dns(TCP, 53, "x.cdn.example").outcome, Outcome::L7Allowed);
    assert_eq!(
        dns(UDP, 5353, "x.cdn.example").outcome,
        Outcome::DefaultDeny
    );
    // A side with no DNS redirect is check(.., None).
    assert_eq!(
        c.check_dns(Direction::Egress, APP, API, TCP, 443, "evil.example"),
        c.check(Direction::Egress, APP, API, TCP, 443, None)
    );
    // The verdict without a query: the port is allowed, as HTTP without a request.
    let d = c.verdict(APP, DNS, UDP, 53, None);
    assert_eq!(
        (d.verdict, d.egress.outcome),
        (Verdict::Allow, Outcome::L7Allowed)
    );
}

fn load_error(text: &str) -> String {
    match load_str(text, "bad.yaml") {
        Err(LoadError::Invalid(d)) => d
            .iter()
            .map(|d| format!("{}:{}: {}", d.file, d.line, d.message))
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("expected an invalid policy, got {other:?}"),
    }
}

#[test]
fn bad_selectors_are_load_errors_at_their_line() {
    let policy = |egress: &str| {
        format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, namespace: ns}}\nspec:\n  endpointSelector: {{}}\n  egress:\n{egress}"
        )
    };
    let cases = [
        (
            "  - toFQDNs: [{matchName: a.com, matchPattern: \"*.a.com\"}]\n",
            "bad.yaml:7: spec.egress[0].toFQDNs[0]: expected exactly one of `matchName`, `matchPattern`",
        ),
        (
            "  - toFQDNs: [{}]\n",
            "bad.yaml:7: spec.egress[0].toFQDNs[0]: expected exactly one",
        ),
        (
            "  - toFQDNs:\n    - matchName: \"*.a.com\"\n",
            "bad.yaml:8: spec.egress[0].toFQDNs[0]: `matchName: *.a.com`: `*` is not allowed",
        ),
        (
            "  - toFQDNs:\n    - matchPattern: \"a.(b|c).com\"\n",
            "bad.yaml:8: spec.egress[0].toFQDNs[0]: `matchPattern: a.(b|c).com`: `(` is not allowed",
        ),
        (
            "  - toFQDNs:\n    - matchPattern: \"\"\n",
            "spec.egress[0].toFQDNs[0]: `matchPattern` is empty",
        ),
        (
            "  - toFQDNs:\n    - matchName: a..com\n",
            "bad.yaml:8: spec.egress[0].toFQDNs[0]: `matchName: a..com`: empty label",
        ),
        (
            "  - toPorts:\n    - ports: [{port: \"53\", protocol: UDP}]\n      rules:\n        dns:\n        - matchPattern: \"*.example.com/\"\n",
            "bad.yaml:11: spec.egress[0].toPorts[0].rules.dns[0]: `matchPattern: *.example.com/`: `/` is not allowed",
        ),
    ];
    for (egress, want) in cases {
        let got = load_error(&policy(egress));
        assert!(got.contains(want), "want `{want}`, got:\n{got}");
    }
    let ingress = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: ns}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts:\n    - ports: [{port: \"53\", protocol: UDP}]\n      rules: {dns: [{matchPattern: \"*\"}]}\n";
    let got = load_error(ingress);
    assert!(
        got.contains(
            "bad.yaml:9: spec.ingress[0].toPorts[0]: `rules.dns` is not allowed on ingress"
        ),
        "{got}"
    );
    let long = format!("{}.com", "a".repeat(260));
    let got = load_error(&policy(&format!("  - toFQDNs: [{{matchName: {long}}}]\n")));
    assert!(got.contains("at most 255"), "{got}");
}
