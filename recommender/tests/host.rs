//! Host policy: flows of the node's own host (identity 1, recorded by the
//! host firewall) become one CiliumClusterwideNetworkPolicy with
//! `nodeSelector: {}` that validates, loads back, and replays through the
//! compiler's host subject: observed host flows allowed, others denied.

mod common;

use cnpilot_learner::aggregate::{FlowSummary, FlowTable};
use cnpilot_learner::Labels;
use cnpilot_recommender::compile::{Outcome, Verdict};
use cnpilot_recommender::model::{load_paths, Cidr, PolicyKind, PolicySet};
use cnpilot_recommender::proof::{self, probes, replay, Evaluators};
use cnpilot_recommender::synth::{self, emit, Disposition, Options, PeerRef, Universe, HOST};
use common::*;
use serde_json::{json, Value};

/// `reserved:host` on one side of a flow, as the learner aggregates it.
fn with_host_src(mut r: FlowSummary) -> FlowSummary {
    r.src_identity = 1;
    r.src_namespace = String::new();
    r.src_workload = "host".into();
    r.src_labels = Labels::reserved("host");
    r.nodes = ["node-1".to_string()].into();
    r
}

fn with_host_dst(mut r: FlowSummary) -> FlowSummary {
    r.dst_identity = 1;
    r.dst_namespace = String::new();
    r.dst_workload = "host".into();
    r.dst_labels = Labels::reserved("host");
    r.dst_peer = "host".into();
    r.nodes = ["node-1".to_string()].into();
    r
}

/// The host's egress to a world address on 443 and to kube-dns on 53/UDP;
/// frontend sending traces to the datadog agent (hostNetwork) on 8126,
/// as HTTP and as plain connections; plus one workload flow.
fn host_table() -> FlowTable {
    let mut world = with_host_src(to_world(&FRONTEND, "198.19.162.10", 443, 12));
    world.nodes = ["node-1".to_string(), "node-2".to_string()].into();
    let rows = vec![
        row(&FRONTEND, &PAYMENTS, 6, 8080, None, 40),
        world,
        with_host_src(row(&FRONTEND, &DNS, 17, 53, None, 30)),
        with_host_dst(row(&FRONTEND, &FRONTEND, 6, 8126, None, 20)),
        with_host_dst(row(
            &FRONTEND,
            &FRONTEND,
            6,
            8126,
            Some(("PUT", &["/v0.4/traces"])),
            9,
        )),
    ];
    FlowTable {
        rows,
        ..FlowTable::default()
    }
}

fn host_policy(rec: &synth::Recommendation) -> &emit::Proposed {
    rec.policies
        .iter()
        .find(|p| p.subject == "host")
        .unwrap_or_else(|| panic!("no host policy in {:?}", names(rec)))
}

fn names(rec: &synth::Recommendation) -> Vec<&str> {
    rec.policies.iter().map(|p| p.file_name.as_str()).collect()
}

fn as_json(p: &emit::Proposed) -> (String, Value) {
    let yaml = emit::render(p).unwrap();
    let value: Value = serde_yaml::from_str(&yaml).unwrap();
    (yaml, value)
}

fn host() -> PeerRef {
    PeerRef::Entity(HOST)
}

fn world(ip: &str) -> PeerRef {
    PeerRef::Cidr(format!("{ip}/32").parse::<Cidr>().unwrap())
}

#[test]
fn host_flows_become_one_clusterwide_host_policy_of_the_cilium_shape() {
    let rec = synth::recommend(&host_table(), &PolicySet::default(), &Options::default());
    assert!(rec.excluded.is_empty(), "{:?}", rec.excluded);
    let p = host_policy(&rec);
    assert_eq!(p.file_name, "cnpilot-host.yaml");
    assert_eq!(p.policy.kind, PolicyKind::CiliumClusterwideNetworkPolicy);
    let (yaml, v) = as_json(p);
    assert_eq!(v["metadata"]["name"], "cnpilot-host", "{yaml}");
    assert!(v["metadata"].get("namespace").is_none(), "{yaml}");
    let spec = &v["spec"];
    assert_eq!(spec["nodeSelector"], json!({}), "{yaml}");
    assert!(spec.get("endpointSelector").is_none(), "{yaml}");
    assert_eq!(
        spec["enableDefaultDeny"],
        json!({"ingress": true, "egress": true})
    );
    // Egress: kube-dns by its labels with no `rules.dns` (a host policy
    // takes no L7 rules), the world address as a /32.
    assert_eq!(
        spec["egress"],
        json!([
            {
                "toEndpoints": [{"matchLabels": {
                    "k8s-app": "kube-dns",
                    "io.kubernetes.pod.namespace": "kube-system"}}],
                "toPorts": [{"ports": [{"port": "53", "protocol": "UDP"}]}]
            },
            {
                "toCIDR": ["198.19.162.10/32"],
                "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]
            }
        ]),
        "{yaml}"
    );
    // Ingress from the pod, with its namespace (a CCNP's peer selector
    // without one selects pods of every namespace), L4 only although HTTP
    // was seen on 8126.
    assert_eq!(
        spec["ingress"],
        json!([{
            "fromEndpoints": [{"matchLabels": {
                "app": "frontend-app",
                "io.kubernetes.pod.namespace": "web"}}],
            "toPorts": [{"ports": [{"port": "8126", "protocol": "TCP"}]}]
        }]),
        "{yaml}"
    );
    let ann = &v["metadata"]["annotations"];
    assert_eq!(ann["cnpilot.io/nodes"], "node-1, node-2");
    assert_eq!(ann["cnpilot.io/subject"], "host");
    let evidence = ann["cnpilot.io/evidence.ingress.0"].as_str().unwrap();
    assert!(
        evidence.starts_with("29 connections/requests in 2 flow(s)"),
        "{evidence}"
    );
    assert!(
        ann["cnpilot.io/evidence.egress.1"]
            .as_str()
            .unwrap()
            .contains("host -> 198.19.162.10/32 TCP/443"),
        "{yaml}"
    );
    assert!(
        rec.warnings
            .iter()
            .any(|w| w.contains("cnpilot-host") && w.contains("TCP/8126") && w.contains("L4")),
        "{:?}",
        rec.warnings
    );
    assert!(!p.exact, "nodeSelector {{}} selects nodes never recorded");

    // The pod's side of the same flow: egress to the host entity.
    let frontend = rec
        .policies
        .iter()
        .find(|p| p.subject == "web/frontend-app")
        .unwrap();
    let (fy, fv) = as_json(frontend);
    let to_host = fv["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r.get("toEntities").is_some())
        .unwrap_or_else(|| panic!("no toEntities rule:\n{fy}"));
    assert_eq!(to_host["toEntities"], json!(["host"]), "{fy}");
    // kube-dns: the host reaches it by allow-localhost, no ingress rule.
    assert!(!rec
        .policies
        .iter()
        .any(|p| p.subject == "kube-system/kube-dns"));
}

#[test]
fn the_host_policy_validates_and_loads_back() {
    let ccnp = schema("ciliumclusterwidenetworkpolicy_v2.json");
    let rec = synth::recommend(&host_table(), &PolicySet::default(), &Options::default());
    let (yaml, v) = as_json(host_policy(&rec));
    let errors: Vec<String> = ccnp
        .iter_errors(&v)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{}\n{yaml}", errors.join("\n"));
    // The loader's own checks (one of endpointSelector/nodeSelector, CCNP
    // only) accept it, with no warning.
    let set = proposed_set(&rec);
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
    // The schema check is not vacuous: a host rule with an endpoint
    // selector beside it is no CCNP a cluster takes twice.
    let mut both = v.clone();
    both["spec"]["endpointSelector"] = json!({});
    let bad =
        cnpilot_recommender::model::load_str(&serde_yaml::to_string(&both).unwrap(), "both.yaml");
    assert!(bad.is_err(), "endpointSelector and nodeSelector together");
}

#[test]
fn replay_allows_the_host_flows_and_denies_others() {
    let table = host_table();
    let rec = synth::recommend(&table, &PolicySet::default(), &Options::default());
    let proposed = proposed_set(&rec);
    let universe = Universe::from_table(&table);
    let ev = Evaluators::new(&universe, &PolicySet::default(), &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    assert_eq!(replayed.denied.len(), 0, "{:#?}", replayed.denied);
    assert_eq!(replayed.allowed_flows, table.rows.len());

    let decide = |src: &PeerRef, dst: &PeerRef, proto, port| {
        proof::decide(&ev.combined, src, dst, proto, port, &[])
    };
    // Observed: allowed by the host policy itself.
    let (v, egress, _) = decide(&host(), &world("198.19.162.10"), 6, 443);
    assert_eq!(v, Verdict::Allow);
    assert_eq!(egress.outcome, Outcome::Allowed);
    assert!(ev.is_proposed(egress.rule));
    // Without the proposal the host was not restricted at all: the
    // denials below are the proposal's.
    let (before, _, _) = proof::decide(&ev.current, &host(), &world("198.19.162.11"), 6, 443, &[]);
    assert_eq!(before, Verdict::Allow);
    for (src, dst, proto, port) in [
        (host(), world("198.19.162.11"), 6, 443),
        (host(), world("198.19.162.10"), 6, 80),
        (host(), PeerRef::Workload(DNS.id), 6, 53),
        (host(), PeerRef::Workload(PAYMENTS.id), 6, 8080),
    ] {
        let (v, egress, _) = decide(&src, &dst, proto, port);
        assert_eq!(v, Verdict::Deny, "host -> {dst:?} {proto}/{port}");
        assert_eq!(egress.outcome, Outcome::DefaultDeny);
        assert!(
            ev.combined
                .rule(egress.rule.unwrap())
                .is_some_and(|r| r.name == "cnpilot-host"),
            "{egress:?}"
        );
    }
    // Ingress: another pod or world toward the agent's port, or the pod
    // toward another port, meets the host's default deny.
    for (src, port) in [
        (PeerRef::Workload(PAYMENTS.id), 8126),
        (PeerRef::Entity("world"), 8126),
        (PeerRef::Entity("world"), 22),
    ] {
        let (v, _, ingress) = decide(&src, &host(), 6, port);
        assert_eq!(v, Verdict::Deny, "{src:?} -> host {port}");
        assert_eq!(ingress.outcome, Outcome::DefaultDeny, "{src:?} -> host");
    }

    let probed = probes::probes(&table, &universe, &ev);
    assert!(
        probed.allowed_by_proposal.is_empty(),
        "{:#?}",
        probed.allowed_by_proposal
    );
    // kube-dns gets no policy (only the host reached it, which
    // allow-localhost lets in): probes toward it pass, as no policy.
    assert!(
        probed
            .allowed_otherwise
            .iter()
            .all(|p| p.flow.contains("-> kube-system/kube-dns")),
        "{:#?}",
        probed.allowed_otherwise
    );
    // The probes reach the host: as a server, as a client, toward world.
    // With no policy at all every probe passes and is listed.
    let none = PolicySet::default();
    let open = probes::probes(&table, &universe, &Evaluators::new(&universe, &none, &none));
    assert_eq!(open.total, probed.total);
    let host_probes: Vec<probes::ProbeKind> = open
        .allowed_otherwise
        .iter()
        .filter(|p| p.flow.starts_with("host ->") || p.flow.contains("-> host "))
        .map(|p| p.kind)
        .collect();
    for kind in [
        probes::ProbeKind::OtherPeer,
        probes::ProbeKind::OtherPort,
        probes::ProbeKind::OtherWorldAddress,
        probes::ProbeKind::FromWorld,
    ] {
        assert!(host_probes.contains(&kind), "no {kind:?} probe of the host");
    }
}

#[test]
fn brownfield_adds_to_the_article_host_policy_and_filters_leave_the_host_out() {
    let table = host_table();
    let current = load_paths(&[format!("{ROOT}/cli/policies/seed")]).unwrap();
    let rec = synth::recommend(&table, &current, &Options::default());
    // The article's host policy allows kube-dns on 53/UDP: no new rule for
    // it; the world address and the ingress are new.
    let (yaml, v) = as_json(host_policy(&rec));
    let egress = v["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 1, "{yaml}");
    assert_eq!(egress[0]["toCIDR"], json!(["198.19.162.10/32"]), "{yaml}");
    assert_eq!(v["spec"]["ingress"].as_array().unwrap().len(), 1, "{yaml}");
    let proposed = proposed_set(&rec);
    let universe = Universe::from_table(&table);
    let ev = Evaluators::new(&universe, &current, &proposed);
    let replayed = replay::replay(&table, &universe, &ev, &rec.excluded);
    assert_eq!(replayed.unexpected, 0, "{:#?}", replayed.denied);
    // host -> world was denied by the article's host policy (its egress
    // default deny): the proposal allows it now.
    assert!(
        replayed
            .newly_allowed
            .iter()
            .any(|f| f.src == "host" && f.dst == "198.19.162.10/32"),
        "{:?}",
        replayed.newly_allowed
    );

    // A second round on top of the first, with a new host flow, names its
    // host policy beside the first instead of replacing it.
    let mut more = table.clone();
    more.rows
        .push(with_host_src(to_world(&FRONTEND, "198.19.162.20", 443, 3)));
    let second = synth::recommend(
        &more,
        &proposed,
        &Options {
            allow_denied: true,
            ..Options::default()
        },
    );
    let again = host_policy(&second);
    assert_eq!(
        again.file_name,
        "cnpilot-host-2.yaml",
        "{:?}",
        names(&second)
    );
    assert_eq!(again.policy.metadata.name, "cnpilot-host-2");

    // The host is in no namespace: `-n` leaves it out, and says so.
    let scoped = synth::recommend(
        &table,
        &PolicySet::default(),
        &Options {
            namespaces: vec!["web".into()],
            ..Options::default()
        },
    );
    assert!(scoped.policies.iter().all(|p| p.subject != "host"));
    assert!(scoped
        .excluded
        .iter()
        .any(|e| e.flow.src == "host" && e.disposition == Disposition::OutOfScope));
}
