//! Reviews of the article's cluster (the seed flows and policies).

use cnpilot_learner::aggregate::{learn, FlowTable, LearnOptions};
use cnpilot_recommender::synth::{self, emit};
use cnpilot_recommender::PolicySet;
use serde_json::json;

use super::model::*;
use super::{build, html, md, term, Input};

fn seed_current() -> PolicySet {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/policies/seed");
    cnpilot_recommender::load_paths(&[dir]).expect("seed policies")
}

fn seed_table() -> FlowTable {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::fixture::write_seed_store(dir.path()).expect("store");
    learn(&[dir.path().to_path_buf()], &LearnOptions::default()).expect("learn")
}

/// The recommender's proposal, written and loaded back as `review` reads it.
fn recommended(table: &FlowTable, current: &PolicySet) -> PolicySet {
    let rec = synth::recommend(table, current, &synth::Options::default());
    let dir = tempfile::tempdir().expect("tempdir");
    for p in &rec.policies {
        let text = emit::render(p).expect("render");
        std::fs::write(dir.path().join(&p.file_name), text).expect("write");
    }
    cnpilot_recommender::load_paths(&[dir.path()]).expect("proposal loads")
}

fn input<'a>(
    proposed: &'a PolicySet,
    current: &'a PolicySet,
    table: Option<&'a FlowTable>,
) -> Input<'a> {
    Input {
        proposed,
        proposed_dirs: vec!["proposed/".into()],
        current,
        current_dirs: vec!["seed/".into()],
        table,
        stores: vec!["store/".into()],
        saved: None,
        options: synth::Options::default(),
    }
}

fn policy<'a>(r: &'a Review, object: &str) -> &'a PolicyReview {
    r.policies
        .iter()
        .find(|p| p.object == object)
        .unwrap_or_else(|| {
            panic!(
                "no {object} in {:?}",
                r.policies.iter().map(|p| &p.object).collect::<Vec<_>>()
            )
        })
}

#[test]
fn the_recommended_brownfield_proposal_passes_with_evidence_and_risk_notes() {
    let table = seed_table();
    let current = seed_current();
    let proposed = recommended(&table, &current);
    let r = build(&input(&proposed, &current, Some(&table)));
    assert!(!r.should_stop(), "{:?}", r.summary.stop_reasons);
    assert!(r.unexpected_denials.is_empty());
    assert!(r.newly_denied.is_empty());
    // The store's flows that current policy denied and the proposal allows.
    assert!(r
        .newly_allowed
        .iter()
        .any(|l| l.flow == "tenant-a/worker -> monitoring/prometheus TCP/9090"));
    assert_eq!(
        r.excluded_source.as_deref(),
        Some("recomputed from --store")
    );
    assert!(r
        .excluded
        .iter()
        .any(|l| l.flow == "tenant-a/worker -> tenant-b/app TCP/8080"));

    let web = policy(&r, "CiliumNetworkPolicy web/cnpilot-frontend-app");
    assert_eq!(web.status, Status::New);
    assert_eq!(web.blast_radius, ["web/frontend-app"]);
    assert_eq!(
        web.blast_radius_store.as_deref(),
        Some(&["web/frontend-app".to_string()][..])
    );
    let world = web
        .rules
        .iter()
        .find(|x| x.peers == ["198.19.0.7/32"])
        .expect("world rule");
    assert!(world.risks.iter().any(|x| x.kind == RiskKind::WorldEgress));
    assert_eq!(world.observed.as_ref().map(|o| o.connections), Some(4));
    assert!(world
        .evidence
        .as_deref()
        .is_some_and(|e| e.starts_with("4 connections")));
    let finance = policy(&r, "CiliumNetworkPolicy ops/cnpilot-finance-tool");
    assert!(
        finance.all_risks().any(|x| x.kind == RiskKind::FewFlows),
        "{finance:#?}"
    );

    // The article's one-sided rule, with the connections it cost.
    let prom = r
        .current_findings
        .iter()
        .find(|f| {
            f.what
                .contains("tenant-a/worker -> monitoring/prometheus TCP/9090")
        })
        .expect("prometheus finding");
    assert_eq!(prom.observed_connections, 6);

    let text = term::render(&r, false);
    assert!(
        text.starts_with("cnpilot review: 5 proposed policies (5 new, 0 changed)"),
        "{text}"
    );
    assert!(text.contains("OK: nothing that should stop a pipeline"));
    assert!(!text.contains('\x1b'));
    assert!(term::render(&r, true).contains("\x1b["));
    let markdown = md::render(&r);
    assert!(markdown.contains("#### `CiliumNetworkPolicy web/cnpilot-frontend-app` — new"));
    assert!(markdown.contains("| rule | | peers |"));
}

#[test]
fn a_proposal_that_denies_todays_traffic_stops_the_pipeline() {
    let table = seed_table();
    let current = seed_current();
    // tenant-a/app into default deny, allowing nothing: worker -> app breaks.
    let lockdown = cnpilot_recommender::load_str(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: lockdown, namespace: tenant-a}\nspec:\n  endpointSelector: {matchLabels: {app: app}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: worker}}]\n",
        "lockdown.yaml",
    )
    .expect("policy");
    let r = build(&input(&lockdown, &current, Some(&table)));
    assert!(r.should_stop());
    assert!(
        r.newly_denied
            .iter()
            .any(|l| l.flow == "tenant-a/worker -> tenant-a/app TCP/8080"),
        "{:?}",
        r.newly_denied
    );
    assert!(r
        .summary
        .stop_reasons
        .iter()
        .any(|s| s.contains("allowed today would be denied")));
}

#[test]
fn shadowed_http_rules_and_never_hit_rules_are_flagged() {
    let table = seed_table();
    let proposed = cnpilot_recommender::load_str(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: pay, namespace: payments}\nspec:\n  endpointSelector: {matchLabels: {app: payments-api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: frontend-app, io.kubernetes.pod.namespace: web}}]\n    toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET, path: /api/v1/charges}]}}]\n  - fromEndpoints: [{matchLabels: {app: frontend-app, io.kubernetes.pod.namespace: web}}]\n    toPorts: [{ports: [{port: '8080', protocol: TCP}]}]\n  - fromEndpoints: [{matchLabels: {app: nobody}}]\n    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]\n",
        "pay.yaml",
    )
    .expect("policy");
    let none = PolicySet::default();
    let r = build(&input(&proposed, &none, Some(&table)));
    let p = policy(&r, "CiliumNetworkPolicy payments/pay");
    let l7 = &p.rules[0];
    let shadow = l7
        .risks
        .iter()
        .find(|x| x.kind == RiskKind::ShadowedL7)
        .expect("shadowed");
    assert!(
        shadow.message.contains("pay spec.ingress[1]"),
        "{}",
        shadow.message
    );
    assert!(p.rules[2]
        .risks
        .iter()
        .any(|x| x.kind == RiskKind::NeverHit));
    assert!(r.should_stop());
    assert!(r
        .summary
        .stop_reasons
        .iter()
        .any(|s| s.contains("shadowed")));
    // Without a store, the policies' own selectors stand in for workloads.
    let r = build(&input(&proposed, &none, None));
    assert!(policy(&r, "CiliumNetworkPolicy payments/pay").rules[0]
        .risks
        .iter()
        .any(|x| x.kind == RiskKind::ShadowedL7));
    assert!(r.notes.iter().any(|n| n.contains("annotations only")));
    assert!(r.excluded_source.is_none());
}

#[test]
fn a_saved_report_stands_in_for_the_store() {
    let current = seed_current();
    let proposed = cnpilot_recommender::load_str(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: w\n  namespace: web\n  annotations: {cnpilot.io/evidence.egress.0: '1 connections/requests in 1 flow(s)', cnpilot.io/blast-radius: 'web/a, web/b'}\nspec:\n  endpointSelector: {matchLabels: {tier: web}}\n  egress:\n  - toEntities: [world]\n",
        "w.yaml",
    )
    .expect("policy");
    let saved = json!({
        "excluded": [{"flow": {"src": "web/a", "dst": "data/db", "port": "TCP/5432", "connections": 2},
                      "disposition": {"kind": "below-min-count", "min_count": 3}}],
        "replay": {"flows": 3, "connections": 10, "allowed_flows": 1, "allowed_connections": 5,
                   "denied": [{"flow": {"src": "web/a", "dst": "data/db", "port": "TCP/5432", "connections": 2}, "reason": "x", "expected": {"kind": "below-min-count"}},
                              {"flow": {"src": "web/b", "dst": "data/db", "port": "TCP/5432", "connections": 3}, "reason": "default deny", "expected": null}],
                   "newly_denied": [], "newly_allowed": []},
        "probes": {"total": 4, "denied": 4, "allowed_by_proposal": [], "allowed_otherwise": []}
    });
    let mut inp = input(&proposed, &current, None);
    inp.saved = Some(saved);
    let r = build(&inp);
    assert_eq!(
        r.excluded_source.as_deref(),
        Some("from .cnpilot/report.json")
    );
    assert_eq!(r.excluded[0].flow, "web/a -> data/db TCP/5432");
    assert_eq!(r.excluded[0].detail, "below-min-count: 3");
    assert_eq!(r.unexpected_denials.len(), 1);
    assert!(r.should_stop());
    let p = policy(&r, "CiliumNetworkPolicy web/w");
    let kinds: Vec<RiskKind> = p.all_risks().map(|x| x.kind).collect();
    assert_eq!(
        kinds,
        [
            RiskKind::BlastRadius,
            RiskKind::WorldEgress,
            RiskKind::FewFlows
        ]
    );
}

#[test]
fn html_is_one_self_contained_escaped_file() {
    let table = seed_table();
    let current = seed_current();
    let mut proposed = recommended(&table, &current);
    proposed.policies[0].policy.metadata.annotations.insert(
        "cnpilot.io/evidence.egress.0".into(),
        "<script>alert(1)</script>".into(),
    );
    let r = build(&input(&proposed, &current, Some(&table)));
    let page = html::render(&r);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<script"), "unescaped input or a script");
    assert!(page.contains("&lt;script&gt;"));
    for external in ["http://", "https://", "src=", "<link"] {
        assert!(!page.contains(external), "external reference {external}");
    }
    assert_eq!(
        page.matches("<section class=\"policy\">").count(),
        r.policies.len()
    );
}

/// The seed flows plus the host's egress to a world address and a pod's
/// connections to the host (a node-local agent on 8126).
fn with_host_flows(mut table: FlowTable) -> FlowTable {
    let host = cnpilot_learner::Labels::reserved("host");
    let mut egress = table
        .rows
        .iter()
        .find(|r| r.dst_peer.contains('/'))
        .cloned()
        .expect("a world row");
    egress.src_identity = 1;
    egress.src_namespace = String::new();
    egress.src_workload = "host".into();
    egress.src_labels = host.clone();
    egress.dst_peer = "198.19.162.10/32".into();
    let mut ingress = table
        .rows
        .iter()
        .find(|r| r.src_namespace == "web" && r.l7_protocol.is_none())
        .cloned()
        .expect("a plain web row");
    ingress.dst_identity = 1;
    ingress.dst_namespace = String::new();
    ingress.dst_workload = "host".into();
    ingress.dst_labels = host;
    ingress.dst_peer = "host".into();
    ingress.dst_port = 8126;
    table.rows.extend([egress, ingress]);
    table
}

#[test]
fn a_host_policy_is_hit_by_the_host_flows_of_the_store() {
    let table = with_host_flows(seed_table());
    let none = PolicySet::default();
    let proposed = recommended(&table, &none);
    let r = build(&input(&proposed, &none, Some(&table)));
    assert!(
        r.unexpected_denials.is_empty(),
        "{:?}",
        r.unexpected_denials
    );
    let p = policy(&r, "CiliumClusterwideNetworkPolicy cnpilot-host");
    assert_eq!(p.subject.as_deref(), Some("host"));
    let nodes: Vec<&str> = table.rows[table.rows.len() - 1]
        .nodes
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        p.blast_radius_store,
        Some(vec![format!("host ({})", nodes.join(" "))])
    );
    assert_eq!(p.rules.len(), 2, "{:?}", p.rules);
    for rule in &p.rules {
        assert!(rule.observed.is_some(), "{} not hit", rule.path);
        assert!(
            !rule.risks.iter().any(|x| x.kind == RiskKind::NeverHit),
            "{}: {:?}",
            rule.path,
            rule.risks
        );
    }
}
