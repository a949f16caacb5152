//! The recommender on the article's cluster, as a flow table: least
//! privilege, exact selectors, L7 rules, brownfield semantics, the proofs,
//! CRD validity and byte-identical output.

mod common;

use cnpilot_learner::aggregate::FlowTable;
use cnpilot_recommender::model::{load_paths, PolicySet};
use cnpilot_recommender::proof::{probes, replay, Evaluators};
use cnpilot_recommender::synth::{self, emit, Disposition, L7Mode, Options, Universe};
use common::*;

fn seed_table() -> FlowTable {
    let mut rows = vec![
        row(&FRONTEND, &PAYMENTS, 6, 8080, None, 40),
        row(
            &FRONTEND,
            &PAYMENTS,
            6,
            8080,
            Some(("GET", &["/api/v1/charges"])),
            30,
        ),
        row(
            &FRONTEND,
            &PAYMENTS,
            6,
            8080,
            Some(("POST", &["/api/v1/charges"])),
            10,
        ),
        row(
            &FRONTEND,
            &PAYMENTS,
            6,
            8080,
            Some(("POST", &["/api/v1/refunds"])),
            2,
        ),
        row(
            &FRONTEND,
            &PAYMENTS,
            6,
            8080,
            Some((
                "GET",
                &[
                    "/api/v1/charges/1",
                    "/api/v1/charges/22",
                    "/api/v1/charges/333",
                ],
            )),
            9,
        ),
        row(
            &ANALYTICS,
            &PAYMENTS,
            6,
            8080,
            Some(("GET", &["/api/v1/charges"])),
            20,
        ),
        row(
            &ANALYTICS,
            &PAYMENTS,
            6,
            8080,
            Some(("POST", &["/api/v1/charges"])),
            2,
        ),
        row(
            &FINANCE,
            &PAYMENTS,
            6,
            8080,
            Some(("POST", &["/api/v1/refunds"])),
            10,
        ),
        row(&A_WORKER, &A_APP, 6, 8080, None, 50),
        row(&A_WORKER, &B_APP, 6, 8080, None, 4),
        row(&A_WORKER, &PROM, 6, 9090, None, 10),
        row(&PROM, &A_APP, 6, 8080, None, 10),
        to_world(&PAYMENTS, "198.19.50.10", 443, 16),
    ];
    for w in [&FRONTEND, &ANALYTICS, &FINANCE, &A_WORKER, &PROM] {
        rows.push(row(w, &DNS, 17, 53, None, 5));
    }
    rows.sort_by(|a, b| {
        (a.src_identity, a.dst_identity, &a.l7_method).cmp(&(
            b.src_identity,
            b.dst_identity,
            &b.l7_method,
        ))
    });
    FlowTable {
        rows,
        ..FlowTable::default()
    }
}

fn article() -> PolicySet {
    load_paths(&[format!("{ROOT}/cli/policies/seed")]).unwrap()
}

#[test]
fn greenfield_allows_everything_observed_and_nothing_else() {
    let table = seed_table();
    let rec = synth::recommend(&table, &PolicySet::default(), &Options::default());
    assert!(rec.excluded.is_empty(), "{:?}", rec.excluded);
    // One policy per workload that has a side to allow.
    let subjects: Vec<&str> = rec.policies.iter().map(|p| p.subject.as_str()).collect();
    assert_eq!(subjects.len(), 9, "{subjects:?}");
    assert!(
        rec.policies.iter().all(|p| p.exact),
        "every selector is exact here"
    );

    let proposed = proposed_set(&rec);
    let universe = Universe::from_table(&table);
    let ev = Evaluators::new(&universe, &PolicySet::default(), &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    assert_eq!(replayed.denied.len(), 0, "{:?}", replayed.denied);
    assert_eq!(replayed.allowed_flows, table.rows.len());
    let probed = probes::probes(&table, &universe, &ev);
    assert!(probed.total > 100, "{} probes", probed.total);
    assert!(
        probed.allowed_by_proposal.is_empty(),
        "{:#?}",
        probed.allowed_by_proposal
    );
    assert_eq!(probed.denied, probed.total);

    // The payments policy: per-client HTTP rules, the id template, DNS.
    let payments = rec
        .policies
        .iter()
        .find(|p| p.subject == "payments/payments-api")
        .unwrap();
    let yaml = emit::render(payments).unwrap();
    assert!(yaml.contains("path: /api/v1/charges/[0-9]+"), "{yaml}");
    assert!(yaml.contains("198.19.50.10/32"), "{yaml}");
    assert!(!yaml.contains("pod-template-hash"));
    let frontend = rec
        .policies
        .iter()
        .find(|p| p.subject == "web/frontend-app")
        .unwrap();
    let fy = emit::render(frontend).unwrap();
    assert!(
        fy.contains("matchPattern: '*'"),
        "DNS egress with its dns rule:\n{fy}"
    );
    assert!(fy.contains("io.kubernetes.pod.namespace: payments"), "{fy}");
}

#[test]
fn generated_yaml_validates_and_is_byte_identical_across_runs() {
    let cnp = schema("ciliumnetworkpolicy_v2.json");
    let table = seed_table();
    for current in [PolicySet::default(), article()] {
        for l7 in [L7Mode::Paths, L7Mode::Methods, L7Mode::Off] {
            let options = Options {
                l7,
                ..Options::default()
            };
            let a = synth::recommend(&table, &current, &options);
            let b = synth::recommend(&table, &current, &options);
            assert!(!a.policies.is_empty());
            for (x, y) in a.policies.iter().zip(&b.policies) {
                let text = emit::render(x).unwrap();
                assert_eq!(text, emit::render(y).unwrap());
                let instance: serde_json::Value = serde_yaml::from_str(&text).unwrap();
                let errors: Vec<String> = cnp
                    .iter_errors(&instance)
                    .map(|e| format!("{e} at {}", e.instance_path()))
                    .collect();
                assert!(
                    errors.is_empty(),
                    "{}:\n{}\n{text}",
                    x.file_name,
                    errors.join("\n")
                );
                assert_eq!(
                    instance["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                    "cnpilot"
                );
            }
        }
    }
}

#[test]
fn brownfield_keeps_what_the_article_denies_and_fills_one_sided_rules() {
    let table = seed_table();
    let current = article();
    let rec = synth::recommend(&table, &current, &Options::default());
    let why = |src: &str, dst: &str, http: Option<&str>| {
        rec.excluded
            .iter()
            .find(|e| e.flow.src == src && e.flow.dst == dst && e.flow.http.as_deref() == http)
            .map(|e| e.disposition.clone())
    };
    // Cross-tenant: both sides default-deny today.
    assert!(matches!(
        why("tenant-a/worker", "tenant-b/app", None),
        Some(Disposition::KeptDenied { .. })
    ));
    // The article's two L7 denials stay denied.
    assert!(matches!(
        why(
            "web/frontend-app",
            "payments/payments-api",
            Some("POST /api/v1/refunds")
        ),
        Some(Disposition::L7DeniedByCurrent { .. })
    ));
    assert!(matches!(
        why(
            "data/analytics-service",
            "payments/payments-api",
            Some("POST /api/v1/charges")
        ),
        Some(Disposition::L7DeniedByCurrent { .. })
    ));

    let proposed = proposed_set(&rec);
    // The missing side of tenant-a's egress to prometheus: its ingress.
    let prom = rec
        .policies
        .iter()
        .find(|p| p.subject == "monitoring/prometheus")
        .unwrap();
    let py = emit::render(prom).unwrap();
    assert!(py.contains("io.kubernetes.pod.namespace: tenant-a"), "{py}");
    assert!(py.contains("'9090'"), "{py}");

    let universe = Universe::from_table(&table);
    let ev = Evaluators::new(&universe, &current, &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    assert_eq!(replayed.unexpected, 0, "{:#?}", replayed.denied);
    // Exactly the excluded flows are denied: DNS, prometheus and world work.
    assert_eq!(
        replayed.denied.len(),
        rec.excluded.len(),
        "{:#?}",
        replayed.denied
    );
    assert!(
        replayed.newly_denied.is_empty(),
        "{:?}",
        replayed.newly_denied
    );
    let probed = probes::probes(&table, &universe, &ev);
    assert!(
        probed.allowed_by_proposal.is_empty(),
        "{:#?}",
        probed.allowed_by_proposal
    );
    // The tenant policies allow any port inside the namespace: those
    // probes pass because of current policy, and are reported as such.
    assert!(!probed.allowed_otherwise.is_empty());
}

#[test]
fn min_count_and_namespace_filters_list_what_they_leave_out() {
    let table = seed_table();
    let rec = synth::recommend(
        &table,
        &PolicySet::default(),
        &Options {
            min_count: 5,
            ..Options::default()
        },
    );
    let below: Vec<_> = rec
        .excluded
        .iter()
        .filter(|e| matches!(e.disposition, Disposition::BelowMinCount { .. }))
        .collect();
    assert_eq!(below.len(), 3, "{below:?}"); // refunds x2, analytics POST x2, worker->tenant-b x4
    let rec = synth::recommend(
        &table,
        &PolicySet::default(),
        &Options {
            namespaces: vec!["payments".into()],
            ..Options::default()
        },
    );
    assert_eq!(rec.policies.len(), 1);
    assert_eq!(rec.policies[0].subject, "payments/payments-api");
}

#[test]
fn cidr_prefix_aggregates_world_addresses() {
    let mut table = seed_table();
    table.rows.push(to_world(&PAYMENTS, "198.19.50.11", 443, 3));
    let exact = synth::recommend(&table, &PolicySet::default(), &Options::default());
    let y = emit::render(
        exact
            .policies
            .iter()
            .find(|p| p.subject == "payments/payments-api")
            .unwrap(),
    )
    .unwrap();
    assert!(
        y.contains("198.19.50.10/31"),
        "both halves of the /31 were seen:\n{y}"
    );
    let wide = synth::recommend(
        &table,
        &PolicySet::default(),
        &Options {
            cidr_prefix: Some(24),
            ..Options::default()
        },
    );
    let y = emit::render(
        wide.policies
            .iter()
            .find(|p| p.subject == "payments/payments-api")
            .unwrap(),
    )
    .unwrap();
    assert!(y.contains("198.19.50.0/24"), "{y}");
}

/// Recommending again on top of an earlier proposal (the loop a rollback's
/// addition starts) must add policies beside the current ones, never name
/// one like a current policy: applied, it would replace it and drop its
/// rules.
#[test]
fn a_second_round_stands_beside_the_first_instead_of_replacing_it() {
    let table = seed_table();
    let first = synth::recommend(&table, &PolicySet::default(), &Options::default());
    let current = proposed_set(&first);
    // Something new: analytics now also calls payments on another port.
    let mut more = seed_table();
    more.rows.push(row(&ANALYTICS, &PAYMENTS, 6, 9090, None, 5));
    // Denied on both sides by the first round: proposed on request (as the
    // rollback's addition asks), kept denied otherwise.
    let options = Options {
        allow_denied: true,
        ..Options::default()
    };
    let second = synth::recommend(&more, &current, &options);
    let names: Vec<(String, String)> = second
        .policies
        .iter()
        .map(|p| {
            (
                p.policy.metadata.namespace.clone().unwrap_or_default(),
                p.policy.metadata.name.clone(),
            )
        })
        .collect();
    assert!(!names.is_empty(), "the new flow needs rules");
    for (ns, name) in &names {
        assert!(
            !current.policies.iter().any(|c| {
                c.policy.metadata.namespace.as_deref() == Some(ns.as_str())
                    && &c.policy.metadata.name == name
            }),
            "{ns}/{name} would replace a current policy"
        );
    }
    assert!(
        names.contains(&("payments".into(), "cnpilot-payments-api-2".into())),
        "{names:?}"
    );
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("payments/cnpilot-payments-api-2")),
        "{:?}",
        second.warnings
    );
    // First and second round together allow everything, the new flow too.
    let mut both = current.clone();
    both.extend(proposed_set(&second));
    let universe = Universe::from_table(&more);
    let ev = Evaluators::new(&universe, &PolicySet::default(), &both);
    let replayed = replay::replay(&more, &universe, &ev, &second.excluded);
    assert_eq!(replayed.denied.len(), 0, "{:?}", replayed.denied);
}
