//! `toFQDNs` from DNS answers: a world address the workload looked up
//! before connecting becomes its name; one never answered, answered after
//! the connection, answered to another workload or long expired stays a
//! CIDR.

mod common;

use std::net::IpAddr;

use cnpilot_learner::aggregate::{DnsAnswerSummary, FlowTable};
use cnpilot_recommender::model::{Cidr, EgressRule, PolicySet};
use cnpilot_recommender::synth::{self, emit, Options, Proposed};
use common::*;

/// When the flows of [`common::row`] are first seen.
const T: i64 = 1_780_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;

fn answer(w: &W, name: &str, ip: &str, at: i64, ttl: u32) -> DnsAnswerSummary {
    DnsAnswerSummary {
        src_identity: w.id,
        src_namespace: w.ns.into(),
        src_workload: w.name.into(),
        name: name.into(),
        ip: ip.parse::<IpAddr>().unwrap(),
        first_answered_ns: at,
        last_answered_ns: at,
        ttl,
        answers: 1,
    }
}

fn table() -> FlowTable {
    let mut rows = vec![
        row(&FRONTEND, &DNS, 17, 53, None, 8),
        row(&PAYMENTS, &DNS, 17, 53, None, 3),
        // Looked up a second before: by name.
        to_world(&FRONTEND, "140.82.121.6", 443, 12),
        // Two names answered the same address (a CDN): both, one rule.
        to_world(&FRONTEND, "151.101.1.69", 443, 4),
        // Never answered: by address.
        to_world(&FRONTEND, "198.19.50.10", 443, 7),
        // Answered, but to another workload.
        to_world(&FRONTEND, "140.82.121.7", 443, 2),
        // Answered long before, its TTL run out.
        to_world(&FRONTEND, "140.82.121.9", 443, 2),
        // Answered only after the connection.
        to_world(&PAYMENTS, "140.82.121.5", 443, 5),
    ];
    // An hour later, a second after another lookup: by name.
    let mut late = to_world(&PAYMENTS, "140.82.121.6", 443, 1);
    late.first_seen_ns = T + 3_600 * SECOND;
    rows.push(late);
    FlowTable {
        rows,
        dns: vec![
            answer(&FRONTEND, "api.github.com", "140.82.121.6", T - SECOND, 60),
            answer(&FRONTEND, "pypi.org", "151.101.1.69", T - 2 * SECOND, 300),
            answer(
                &FRONTEND,
                "files.pythonhosted.org",
                "151.101.1.69",
                T - SECOND,
                300,
            ),
            answer(&ANALYTICS, "api.github.com", "140.82.121.7", T - SECOND, 60),
            answer(
                &FRONTEND,
                "old.example.com",
                "140.82.121.9",
                T - 3_600 * SECOND,
                60,
            ),
            answer(&PAYMENTS, "api.github.com", "140.82.121.5", T + SECOND, 60),
            answer(
                &PAYMENTS,
                "api.github.com",
                "140.82.121.6",
                T + 3_599 * SECOND,
                60,
            ),
        ],
        ..FlowTable::default()
    }
}

fn policy_of<'a>(rec: &'a synth::Recommendation, w: &W) -> &'a Proposed {
    rec.policies
        .iter()
        .find(|p| p.subject == format!("{}/{}", w.ns, w.name))
        .expect("a policy for the workload")
}

fn egress(p: &Proposed) -> &[EgressRule] {
    p.policy
        .spec
        .as_ref()
        .and_then(|s| s.egress.as_deref())
        .unwrap_or_default()
}

fn names(rule: &EgressRule) -> Vec<&str> {
    rule.to_fqdns
        .iter()
        .flatten()
        .filter_map(|f| f.match_name.as_deref())
        .collect()
}

fn cidrs(p: &Proposed) -> Vec<String> {
    egress(p)
        .iter()
        .flat_map(|r| r.to_cidr.iter().flatten())
        .map(Cidr::to_string)
        .collect()
}

/// Whether a `toCIDR` of the policy covers `ip` (addresses seen on the same
/// ports may be merged into a shorter prefix).
fn by_cidr(p: &Proposed, ip: &str) -> bool {
    let ip = ip.parse().unwrap();
    egress(p)
        .iter()
        .flat_map(|r| r.to_cidr.iter().flatten())
        .any(|c| c.contains_v4(ip))
}

fn fqdn_rules(p: &Proposed) -> Vec<&EgressRule> {
    egress(p).iter().filter(|r| r.to_fqdns.is_some()).collect()
}

#[test]
fn answered_before_the_connection_becomes_to_fqdns() {
    let rec = synth::recommend(&table(), &PolicySet::default(), &Options::default());
    let frontend = policy_of(&rec, &FRONTEND);
    let rules = fqdn_rules(frontend);
    // Names on the same ports share one rule; the CDN address brings both
    // of its names.
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        names(rules[0]),
        ["api.github.com", "files.pythonhosted.org", "pypi.org"]
    );
    // Every FQDN rule: matchName only, with the flows' port.
    for rule in &rules {
        assert!(rule.to_cidr.is_none() && rule.to_endpoints.is_none());
        for f in rule.to_fqdns.iter().flatten() {
            assert_eq!(f.match_pattern, None);
        }
        let ports = rule.to_ports.as_ref().expect("toPorts");
        let ports: Vec<String> = ports
            .iter()
            .flat_map(|p| {
                p.ports
                    .iter()
                    .map(|pp| format!("{:?}/{}", pp.protocol, pp.port))
            })
            .collect();
        assert_eq!(ports, ["Tcp/443"]);
    }
    // The addresses reached by name are no CIDR; the rest are.
    let frontend_cidrs = cidrs(frontend);
    for by_name in ["140.82.121.6/32", "151.101.1.69/32"] {
        assert!(
            !frontend_cidrs.iter().any(|c| c == by_name),
            "{frontend_cidrs:?}"
        );
    }
    for by_address in ["198.19.50.10/32", "140.82.121.7/32", "140.82.121.9/32"] {
        assert!(
            frontend_cidrs.iter().any(|c| c == by_address),
            "{frontend_cidrs:?}"
        );
    }
}

#[test]
fn answer_after_the_connection_does_not_count() {
    let rec = synth::recommend(&table(), &PolicySet::default(), &Options::default());
    let payments = policy_of(&rec, &PAYMENTS);
    assert!(by_cidr(payments, "140.82.121.5"), "{:?}", cidrs(payments));
    // Its later connection to another address of the name, a minute
    // within a lookup's TTL, is by name.
    let rules = fqdn_rules(payments);
    assert_eq!(rules.len(), 1);
    assert_eq!(names(rules[0]), ["api.github.com"]);
    assert!(!by_cidr(payments, "140.82.121.6"), "{:?}", cidrs(payments));

    // Without any answer, both are addresses and no rule is by name.
    let mut t = table();
    t.dns.clear();
    let rec = synth::recommend(&t, &PolicySet::default(), &Options::default());
    for w in [&FRONTEND, &PAYMENTS] {
        assert!(fqdn_rules(policy_of(&rec, w)).is_empty());
    }
    assert!(by_cidr(policy_of(&rec, &FRONTEND), "140.82.121.6"));
    assert!(by_cidr(policy_of(&rec, &PAYMENTS), "140.82.121.6"));
}

#[test]
fn fqdn_rules_keep_dns_visibility_evidence_and_validate() {
    let rec = synth::recommend(&table(), &PolicySet::default(), &Options::default());
    assert!(
        !rec.warnings.iter().any(|w| w.contains("toFQDNs")),
        "{:?}",
        rec.warnings
    );
    let cnp = schema("ciliumnetworkpolicy_v2.json");
    for w in [&FRONTEND, &PAYMENTS] {
        let p = policy_of(&rec, w);
        // The lookups go through Cilium's DNS proxy, every name allowed.
        let dns: Vec<_> = egress(p)
            .iter()
            .flat_map(|r| r.to_ports.iter().flatten())
            .filter_map(|pr| pr.rules.as_ref()?.dns.as_ref())
            .flatten()
            .collect();
        assert_eq!(dns.len(), 1, "{}", p.subject);
        assert_eq!(dns[0].match_pattern.as_deref(), Some("*"));

        // Every FQDN rule has its evidence, in the annotations too.
        for (i, rule) in egress(p).iter().enumerate() {
            if rule.to_fqdns.is_none() {
                continue;
            }
            let path = format!("spec.egress[{i}]");
            let ev = p.rules.iter().find(|e| e.path == path).expect("evidence");
            assert!(ev.connections > 0 && !ev.default_deny_only);
            for name in names(rule) {
                assert!(
                    ev.peers
                        .iter()
                        .any(|peer| peer.starts_with(name) && peer.contains("DNS answer")),
                    "{:?}",
                    ev.peers
                );
            }
            let annotations = &p.policy.metadata.annotations;
            let text = annotations
                .get(&emit::evidence_key(&path))
                .expect("annotation");
            assert!(text.contains("connections"), "{text}");
        }

        let text = emit::render(p).unwrap();
        assert!(text.contains("toFQDNs:"), "{text}");
        let instance: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        let errors: Vec<String> = cnp
            .iter_errors(&instance)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}\n{text}", errors.join("\n"));
        // And it loads back as the same rules.
        let back = proposed_set(&synth::Recommendation {
            policies: vec![p.clone()],
            ..Default::default()
        });
        assert_eq!(back.policies[0].policy.spec, p.policy.spec);
    }
}

#[test]
fn fqdn_without_a_cluster_dns_server_is_warned_about() {
    // The workload asked a resolver outside the cluster: no DNS companion
    // rule carries `rules.dns`, so Cilium would never learn the names.
    let mut t = table();
    t.rows
        .retain(|r| r.dst_identity != DNS.id || r.src_identity != FRONTEND.id);
    t.rows.push(to_world(&FRONTEND, "8.8.8.8", 53, 3));
    let rec = synth::recommend(&t, &PolicySet::default(), &Options::default());
    assert!(
        rec.warnings
            .iter()
            .any(|w| w.starts_with("web/frontend-app: toFQDNs") && w.contains("rules.dns")),
        "{:?}",
        rec.warnings
    );
    assert!(!fqdn_rules(policy_of(&rec, &FRONTEND)).is_empty());
}

#[test]
fn replay_proves_the_fqdn_rules_with_the_recorded_answers_and_probes_stay_denied() {
    use cnpilot_recommender::proof::{probes, replay, Evaluators};
    use cnpilot_recommender::synth::Universe;
    let table = table();
    let rec = synth::recommend(&table, &PolicySet::default(), &Options::default());
    assert!(!fqdn_rules(policy_of(&rec, &FRONTEND)).is_empty());
    let proposed = proposed_set(&rec);
    let universe = Universe::from_table(&table);
    assert!(!universe.fqdns.is_empty());
    let ev = Evaluators::new(&universe, &PolicySet::default(), &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    assert_eq!(replayed.unexpected, 0, "{:#?}", replayed.denied);
    let probed = probes::probes(&table, &universe, &ev);
    assert!(
        probed.allowed_by_proposal.is_empty(),
        "{:#?}",
        probed.allowed_by_proposal
    );
    // Without the answers the same proposal would not prove itself: the
    // names' addresses would be bare world addresses.
    let blind = Universe {
        fqdns: Vec::new(),
        ..universe.clone()
    };
    let ev = Evaluators::new(&blind, &PolicySet::default(), &proposed);
    assert!(replay::replay(&table, &blind, &ev, &rec.excluded).unexpected > 0);
}
