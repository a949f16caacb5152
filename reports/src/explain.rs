//! Why one flow is allowed or denied: the verdict, the rule that decided
//! each side (the source's egress, the destination's ingress) with its
//! file:line, and the evidence behind those rules (cnpilot's annotations on
//! the deciding policy, and the flow table rows of this flow).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use cnpilot_bpf::maps::Direction;
use cnpilot_learner::aggregate::{format_time, FlowTable};
use cnpilot_learner::identity::{Labels, NAMESPACE_LABEL};
use cnpilot_learner::ReservedIdentity;
use cnpilot_recommender::model::{Cidr, PolicySet};
use cnpilot_recommender::proof::decide;
use cnpilot_recommender::synth::universe::{peer_identity, PeerRef, Universe, Workload};
use cnpilot_recommender::synth::{requests_of, FlowRef};
use cnpilot_recommender::{CompiledPolicy, HttpRequest, Outcome, RuleRef, Side, Verdict};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("`{0}`: expected NS/WORKLOAD, an entity (world, host, remote-node, kube-apiserver, …) or an IPv4 address")]
    BadEndpoint(String),
    #[error("unknown workload `{name}`; known workloads: {}", if .known.is_empty() { "none (give --store or --labels)".to_string() } else { .known.join(", ") })]
    UnknownWorkload { name: String, known: Vec<String> },
    #[error("`{0}`: expected PORT/PROTO, e.g. 8080/TCP or 53/UDP")]
    BadPort(String),
    #[error("`{0}`: expected NS/WORKLOAD=key=value,key=value")]
    BadLabels(String),
}

/// One end of the flow as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Workload { namespace: String, workload: String },
    Entity(ReservedIdentity),
    Ip(Ipv4Addr),
}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, ExplainError> {
        if let Ok(ip) = text.parse::<Ipv4Addr>() {
            return Ok(Endpoint::Ip(ip));
        }
        if let Some(r) = ReservedIdentity::from_name(text) {
            return Ok(Endpoint::Entity(r));
        }
        match text.split_once('/') {
            Some((ns, wl)) if !ns.is_empty() && !wl.is_empty() && !wl.contains('/') => {
                Ok(Endpoint::Workload {
                    namespace: ns.into(),
                    workload: wl.into(),
                })
            }
            _ => Err(ExplainError::BadEndpoint(text.into())),
        }
    }
}

/// `8080/TCP`, `TCP/8080`, `53/udp`, or a bare port (TCP).
pub fn parse_port(text: &str) -> Result<(u8, u16), ExplainError> {
    let bad = || ExplainError::BadPort(text.into());
    let (a, b) = text.split_once('/').unwrap_or((text, "TCP"));
    let (port, proto) = if a.bytes().all(|c| c.is_ascii_digit()) {
        (a, b)
    } else {
        (b, a)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    let proto = match proto.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        _ => return Err(bad()),
    };
    Ok((proto, port))
}

/// `NS/WORKLOAD=k=v,k=v`: labels for a workload no store has seen.
pub fn parse_labels(text: &str) -> Result<(String, String, Labels), ExplainError> {
    let bad = || ExplainError::BadLabels(text.into());
    let (who, rest) = text.split_once('=').ok_or_else(bad)?;
    let Endpoint::Workload {
        namespace,
        workload,
    } = Endpoint::parse(who).map_err(|_| bad())?
    else {
        return Err(bad());
    };
    let mut labels = Labels::new();
    for pair in rest.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
        labels.insert(k.trim(), v.trim());
    }
    // Cilium adds the namespace label to every pod identity.
    labels.insert(NAMESPACE_LABEL, namespace.clone());
    Ok((namespace, workload, labels))
}

/// The question.
#[derive(Debug, Clone)]
pub struct Query {
    pub from: Endpoint,
    pub to: Endpoint,
    pub proto: u8,
    pub port: u16,
    pub http: Option<HttpRequest>,
}

/// One side of the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct SideReport {
    /// `egress of web/frontend-app`.
    pub side: String,
    pub outcome: Outcome,
    /// The deciding rule; for a default deny, every policy selecting the
    /// subject in this direction.
    pub rules: Vec<RuleRef>,
    /// One line a person reads.
    pub summary: String,
    /// cnpilot's annotations on the deciding policy that apply to the
    /// deciding rule (subject, blast radius, evidence of that rule).
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub flow: String,
    pub verdict: Verdict,
    pub egress: SideReport,
    pub ingress: SideReport,
    /// Flow table rows of this flow (with a store).
    pub observed: Vec<Observed>,
    pub store_given: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Observed {
    pub flow: FlowRef,
    pub first_seen: String,
    pub last_seen: String,
    pub verdicts: BTreeMap<String, u64>,
}

/// The identities the question can name: the store's workloads and the
/// `--labels` ones (numbered above every store identity).
pub fn universe(table: Option<&FlowTable>, extra: &[(String, String, Labels)]) -> Universe {
    let mut u = table.map(Universe::from_table).unwrap_or_default();
    let base = u
        .workloads
        .keys()
        .max()
        .copied()
        .unwrap_or(60_000)
        .max(60_000)
        + 1;
    for (i, (namespace, workload, labels)) in extra.iter().enumerate() {
        let next = base + i as u32;
        // --labels overrides what the store saw for the same workload.
        u.workloads
            .retain(|_, w| !(w.namespace == *namespace && w.workload == *workload));
        u.workloads.insert(
            next,
            Workload {
                identity: next,
                namespace: namespace.clone(),
                workload: workload.clone(),
                labels: labels.clone(),
            },
        );
    }
    u
}

/// The peer an endpoint stands for.
pub fn resolve(universe: &Universe, e: &Endpoint) -> Result<PeerRef, ExplainError> {
    match e {
        Endpoint::Entity(r) => Ok(PeerRef::Entity(r.name())),
        Endpoint::Ip(ip) => Ok(PeerRef::Cidr(Cidr::v4(*ip, 32))),
        Endpoint::Workload {
            namespace,
            workload,
        } => universe
            .workloads
            .values()
            .find(|w| w.namespace == *namespace && w.workload == *workload)
            .map(|w| PeerRef::Workload(w.identity))
            .ok_or_else(|| ExplainError::UnknownWorkload {
                name: format!("{namespace}/{workload}"),
                known: universe.workloads.values().map(Workload::name).collect(),
            }),
    }
}

pub use cnpilot_recommender::synth::emit::evidence_key;

fn annotations_for(policies: &PolicySet, rule: &RuleRef) -> BTreeMap<String, String> {
    let Some(p) = policies.policies.iter().find(|p| {
        p.file == rule.file
            && p.policy.metadata.name == rule.name
            && p.policy.kind.as_str() == rule.kind
    }) else {
        return BTreeMap::new();
    };
    let wanted = evidence_key(&rule.path);
    p.policy
        .metadata
        .annotations
        .iter()
        .filter(|(k, _)| {
            k.as_str() == "cnpilot.io/subject"
                || k.as_str() == "cnpilot.io/blast-radius"
                || **k == wanted
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn side_report(
    compiled: &CompiledPolicy,
    policies: &PolicySet,
    side: &Side,
    label: String,
    subject: Option<(u32, Direction)>,
) -> SideReport {
    let mut rules: Vec<RuleRef> = side
        .rule
        .and_then(|id| compiled.rule(id))
        .cloned()
        .into_iter()
        .collect();
    if side.outcome == Outcome::DefaultDeny {
        if let Some((id, dir)) = subject {
            rules = compiled
                .selected_by(id, dir)
                .iter()
                .filter_map(|r| compiled.rule(*r).cloned())
                .collect();
        }
    }
    let first = rules.first().map_or_else(String::new, ToString::to_string);
    let summary = match side.outcome {
        Outcome::NotEnforced => "not enforced (not a pod of the cluster)".to_string(),
        Outcome::NoPolicy => "allowed: no policy selects it in this direction".to_string(),
        Outcome::Allowed => format!("allowed by {first}"),
        Outcome::L7Allowed => format!("HTTP allowed by {first}"),
        Outcome::L7Denied => format!("HTTP request matches no rule of {first}"),
        Outcome::DenyRule => format!("denied by {first}"),
        Outcome::DefaultDeny => format!(
            "default deny: selected by {} and no rule allows it",
            rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    let annotations = match side.outcome {
        Outcome::Allowed | Outcome::L7Allowed | Outcome::L7Denied | Outcome::DenyRule => rules
            .first()
            .map(|r| annotations_for(policies, r))
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    SideReport {
        side: label,
        outcome: side.outcome,
        rules,
        summary,
        annotations,
    }
}

/// Answer `query` against `policies`, compiled for `universe`.
pub fn explain(
    policies: &PolicySet,
    universe: &Universe,
    table: Option<&FlowTable>,
    query: &Query,
) -> Result<Explanation, ExplainError> {
    let src = resolve(universe, &query.from)?;
    let dst = resolve(universe, &query.to)?;
    let compiled = CompiledPolicy::compile(policies, &universe.identity_inputs(), None);
    let requests: Vec<HttpRequest> = query.http.iter().cloned().collect();
    let (verdict, egress, ingress) =
        decide(&compiled, &src, &dst, query.proto, query.port, &requests);
    let s_id = peer_identity(&src, &compiled);
    let d_id = peer_identity(&dst, &compiled);
    let (src_name, dst_name) = (universe.name_of(&src), universe.name_of(&dst));
    let mut flow = format!(
        "{src_name} -> {dst_name} {}/{}",
        cnpilot_recommender::synth::proto_name(query.proto),
        query.port
    );
    if let Some(h) = &query.http {
        let _ = write!(flow, " {} {}", h.method, h.path);
    }
    let observed = table
        .map(|t| {
            t.rows
                .iter()
                .filter(|row| {
                    row.proto == query.proto
                        && row.dst_port == query.port
                        && universe.source(row) == src
                        && universe.destination(row) == dst
                        && match &query.http {
                            None => true,
                            Some(h) => requests_of(row).iter().any(|r| {
                                r.method.eq_ignore_ascii_case(&h.method) && r.path == h.path
                            }),
                        }
                })
                .map(|row| Observed {
                    flow: FlowRef::of(row, universe),
                    first_seen: format_time(row.first_seen_ns),
                    last_seen: format_time(row.last_seen_ns),
                    verdicts: row.verdicts.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Explanation {
        flow,
        verdict,
        egress: side_report(
            &compiled,
            policies,
            &egress,
            format!("egress of {src_name}"),
            Some((s_id, Direction::Egress)),
        ),
        ingress: side_report(
            &compiled,
            policies,
            &ingress,
            format!("ingress of {dst_name}"),
            Some((d_id, Direction::Ingress)),
        ),
        observed,
        store_given: table.is_some(),
    })
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::DenyL7 => "deny-l7",
    }
}

/// The explanation for people.
pub fn render_text(e: &Explanation) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {}",
        e.flow,
        verdict_name(e.verdict).to_uppercase()
    );
    for s in [&e.egress, &e.ingress] {
        let _ = writeln!(out, "  {:<40} {}", format!("{}:", s.side), s.summary);
        for (k, v) in &s.annotations {
            let _ = writeln!(out, "      {k}: {v}");
        }
    }
    if e.store_given {
        if e.observed.is_empty() {
            let _ = writeln!(out, "  observed: never, in the given store(s)");
        } else {
            let _ = writeln!(out, "  observed:");
            for o in &e.observed {
                let verdicts: Vec<String> =
                    o.verdicts.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                let _ = writeln!(
                    out,
                    "    {}  {} connections/requests, {} .. {}, {}",
                    o.flow,
                    o.flow.connections,
                    o.first_seen,
                    o.last_seen,
                    verdicts.join(",")
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnpilot_learner::aggregate::{learn, LearnOptions};

    fn seed_policies() -> PolicySet {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/policies/seed");
        cnpilot_recommender::load_paths(&[dir]).expect("seed policies load")
    }

    fn seed_table() -> FlowTable {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::fixture::write_seed_store(dir.path()).expect("store");
        learn(&[dir.path().to_path_buf()], &LearnOptions::default()).expect("learn")
    }

    fn query(from: &str, to: &str, port: &str, http: Option<(&str, &str)>) -> Query {
        let (proto, port) = parse_port(port).expect("port");
        Query {
            from: Endpoint::parse(from).expect("from"),
            to: Endpoint::parse(to).expect("to"),
            proto,
            port,
            http: http.map(|(m, p)| HttpRequest {
                method: m.into(),
                path: p.into(),
                ..HttpRequest::default()
            }),
        }
    }

    #[test]
    fn the_articles_one_sided_prometheus_rule() {
        let table = seed_table();
        let u = universe(Some(&table), &[]);
        let q = query("tenant-a/worker", "monitoring/prometheus", "9090/TCP", None);
        let e = explain(&seed_policies(), &u, Some(&table), &q).expect("explains");
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.egress.outcome, Outcome::Allowed);
        assert!(e.egress.rules[0]
            .to_string()
            .contains("tenant-a-rules spec.egress[1]"));
        assert!(e.egress.rules[0]
            .to_string()
            .contains("tenant-a-policy.yaml:"));
        assert_eq!(e.ingress.outcome, Outcome::DefaultDeny);
        assert!(
            e.ingress.summary.contains("default-deny-all"),
            "{}",
            e.ingress.summary
        );
        assert_eq!(e.observed.len(), 1);
        assert_eq!(e.observed[0].flow.connections, 6);
        let text = render_text(&e);
        assert!(
            text.starts_with("tenant-a/worker -> monitoring/prometheus TCP/9090: DENY\n"),
            "{text}"
        );
    }

    #[test]
    fn http_rules_decide_per_request() {
        let table = seed_table();
        let u = universe(Some(&table), &[]);
        let policies = seed_policies();
        let post = query(
            "web/frontend-app",
            "payments/payments-api",
            "8080",
            Some(("POST", "/api/v1/refunds")),
        );
        let e = explain(&policies, &u, Some(&table), &post).expect("explains");
        // The cluster-wide default deny denies web's egress first.
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.ingress.outcome, Outcome::L7Denied);
        assert!(e.observed.is_empty());
        let get = query(
            "web/frontend-app",
            "payments/payments-api",
            "8080",
            Some(("GET", "/api/v1/charges")),
        );
        let e = explain(&policies, &u, Some(&table), &get).expect("explains");
        assert_eq!(e.ingress.outcome, Outcome::L7Allowed);
        assert_eq!(e.observed.len(), 1);
    }

    #[test]
    fn labels_stand_in_for_a_store_and_unknown_workloads_list_known_ones() {
        let extra = vec![
            parse_labels("shop/web=app=web").expect("labels"),
            parse_labels("shop/db=app=db,tier=data").expect("labels"),
        ];
        let u = universe(None, &extra);
        let policies = cnpilot_recommender::load_str(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: db, namespace: shop, annotations: {cnpilot.io/evidence.ingress.0: '9 connections'}}\nspec:\n  endpointSelector: {matchLabels: {app: db}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: '5432', protocol: TCP}]}]\n",
            "db.yaml",
        )
        .expect("policy");
        let e = explain(
            &policies,
            &u,
            None,
            &query("shop/web", "shop/db", "5432/tcp", None),
        )
        .expect("explains");
        assert_eq!(e.verdict, Verdict::Allow);
        assert_eq!(
            e.ingress.annotations["cnpilot.io/evidence.ingress.0"],
            "9 connections"
        );
        assert_eq!(e.egress.outcome, Outcome::NoPolicy);
        let e = explain(
            &policies,
            &u,
            None,
            &query("world", "shop/db", "5432/TCP", None),
        )
        .expect("explains");
        assert_eq!(e.verdict, Verdict::Deny);
        assert_eq!(e.egress.outcome, Outcome::NotEnforced);
        let err = explain(
            &policies,
            &u,
            None,
            &query("shop/cache", "shop/db", "5432", None),
        )
        .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown workload `shop/cache`; known workloads: shop/web, shop/db"
        );
    }

    #[test]
    fn parsing_endpoints_ports_and_labels() {
        assert_eq!(
            Endpoint::parse("203.0.113.7").expect("ip"),
            Endpoint::Ip(Ipv4Addr::new(203, 0, 113, 7))
        );
        assert_eq!(
            Endpoint::parse("kube-apiserver").expect("entity"),
            Endpoint::Entity(ReservedIdentity::KubeApiserver)
        );
        assert!(Endpoint::parse("nonsense").is_err());
        assert!(Endpoint::parse("a/b/c").is_err());
        assert_eq!(parse_port("UDP/53").expect("port"), (17, 53));
        assert!(parse_port("99999/TCP").is_err());
        assert!(parse_port("80/ICMP").is_err());
        assert!(parse_labels("shop/web").is_err());
        assert!(parse_labels("shop/web=app").is_err());
    }
}
