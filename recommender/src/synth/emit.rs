//! Turning the sides a proposal must allow into CNP documents, with the
//! evidence of every rule in the policy's annotations.
//!
//! Default deny is spelled twice, on purpose. `enableDefaultDeny:
//! {ingress: true, egress: true}` is the explicit form (Cilium ≥ 1.16),
//! and a direction with nothing observed still gets one empty rule
//! (`ingress: [{}]`): Cilium puts an endpoint into default deny for a
//! direction when a rule selecting it "contains the respective rule
//! section" (Documentation/security/policy/language.rst, "Ingress/Egress
//! Default Deny", and examples/policies/l3/egress-default-deny), while an
//! empty list does not count ("If omitted or empty, this rule does not
//! apply at ingress", `api.Rule` in intro.rst). An older Cilium whose CRD
//! prunes `enableDefaultDeny` therefore still denies by default, and an
//! empty rule selects no peer, so it allows nothing.

use std::collections::BTreeMap;

use cnpilot_learner::aggregate::format_time;
use serde::Serialize;

use super::l7::{http_rules, L7Mode};
use super::selector;
use super::universe::{PeerRef, Universe};
use super::{proto_name, Dir, Options, PortEvidence, Sides, Subject};
use crate::model::{
    ApiVersion, Cidr, CiliumPolicy, DefaultDeny, DnsRule, EgressRule, Entity, IngressRule, L7Rules,
    LabelSelector, ObjectMeta, PolicyKind, PortProtocol, PortRule, PortSpec, Protocol, Rule,
};

/// The label every generated policy carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cnpilot");
/// Annotation prefix of the evidence.
pub const ANNOTATION_PREFIX: &str = "cnpilot.io/";

/// One proposed policy and the evidence behind each of its rules.
#[derive(Debug, Clone, Serialize)]
pub struct Proposed {
    /// File name inside the output directory.
    pub file_name: String,
    #[serde(skip)]
    pub policy: CiliumPolicy,
    /// `namespace/workload` of the subject.
    pub subject: String,
    /// Every workload the subject selector matches.
    pub blast_radius: Vec<String>,
    /// Whether the selector matches the subject and nothing else.
    pub exact: bool,
    pub rules: Vec<RuleEvidence>,
}

/// Evidence for one ingress or egress rule.
#[derive(Debug, Clone, Serialize)]
pub struct RuleEvidence {
    /// `spec.ingress[0]`.
    pub path: String,
    pub direction: Dir,
    pub peers: Vec<String>,
    pub ports: Vec<String>,
    /// Each generated HTTP rule (`GET /api/v1/charges`) and the observed
    /// paths behind it.
    pub http: Vec<(String, Vec<String>)>,
    pub connections: u64,
    pub rows: u64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub example: String,
    /// True for the empty rule that only keeps the direction in default deny.
    pub default_deny_only: bool,
}

fn protocol(proto: u8) -> Protocol {
    match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => Protocol::Any,
    }
}

fn port_protocol(proto: u8, port: u16) -> PortProtocol {
    PortProtocol::new(PortSpec::Number(port), protocol(proto))
}

fn entity(name: &str) -> Option<Entity> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// What a subject's rules may carry at L7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L7Policy {
    /// A workload's CNP: HTTP rules as `--l7` says, DNS companions.
    Workload(L7Mode),
    /// A host policy: none at all (see [`super::host`]).
    Host,
}

/// A generated HTTP rule (`GET /api/v1/charges`) and the observed paths
/// behind it.
type HttpMembers = (String, Vec<String>);

/// A peer, and a (protocol, port) whose observed HTTP got an L4 rule only.
pub(crate) type L7Dropped = (String, (u8, u16));

/// What one peer's observed ports become.
pub(crate) struct PeerPorts {
    pub to_ports: Vec<PortRule>,
    pub http: Vec<HttpMembers>,
    /// Ports whose observed HTTP got no rule: the policy takes none.
    pub l7_dropped: Vec<(u8, u16)>,
}

/// The `toPorts` of one peer, with the HTTP rules' members.
pub(crate) fn port_rules(
    peer: &PeerRef,
    ports: &BTreeMap<(u8, u16), PortEvidence>,
    dir: Dir,
    l7: L7Policy,
) -> PeerPorts {
    let mut plain = Vec::new();
    let mut dns = Vec::new();
    let mut http = Vec::new();
    let mut members = Vec::new();
    let mut l7_dropped = Vec::new();
    for (&(proto, port), ev) in ports {
        let mode = match l7 {
            L7Policy::Workload(mode) => mode,
            L7Policy::Host => {
                if !ev.requests.is_empty() {
                    l7_dropped.push((proto, port));
                }
                plain.push(port_protocol(proto, port));
                continue;
            }
        };
        let is_dns = dir == Dir::Egress && port == 53 && matches!(peer, PeerRef::Workload(_));
        if is_dns {
            dns.push(port_protocol(proto, port));
            continue;
        }
        let generated = if ev.requests.is_empty() {
            Vec::new()
        } else {
            http_rules(&ev.requests, mode)
        };
        if generated.is_empty() {
            plain.push(port_protocol(proto, port));
            continue;
        }
        for g in &generated {
            let method = g.rule.method.as_ref().map_or("*", |m| m.source.as_str());
            let path = g
                .rule
                .path
                .as_ref()
                .map_or("(any path)", |p| p.source.as_str());
            members.push((format!("{method} {path}"), g.members.clone()));
        }
        http.push(PortRule {
            ports: vec![port_protocol(proto, port)],
            rules: Some(L7Rules {
                http: Some(generated.into_iter().map(|g| g.rule).collect()),
                ..L7Rules::default()
            }),
            ..PortRule::default()
        });
    }
    let mut out = Vec::new();
    if !plain.is_empty() {
        out.push(PortRule {
            ports: plain,
            ..PortRule::default()
        });
    }
    if !dns.is_empty() {
        // Cilium's DNS proxy sees the queries: `toFQDNs` rules learn their
        // addresses from it. Every name stays allowed (`*`), also when the
        // subject has `toFQDNs` rules: narrowed to those names, the proxy
        // would refuse the workload's other lookups (cluster service names,
        // the search-path expansions its resolver tries first, names of
        // peers reached by address), which breaks or slows resolution for
        // reasons the flows never showed. Which world names are reachable is
        // the `toFQDNs` rules' job, not the DNS rule's.
        out.push(PortRule {
            ports: dns,
            rules: Some(L7Rules {
                dns: Some(vec![DnsRule {
                    match_name: None,
                    match_pattern: Some("*".into()),
                }]),
                ..L7Rules::default()
            }),
            ..PortRule::default()
        });
    }
    out.extend(http);
    PeerPorts {
        to_ports: out,
        http: members,
        l7_dropped,
    }
}

/// What one peer was seen on: (protocol, port) → evidence.
type Ports = BTreeMap<(u8, u16), PortEvidence>;

/// Peers of one rule, by kind: Cilium does not combine endpoint, entity
/// and CIDR peers in one rule.
#[derive(Default)]
struct Group {
    endpoints: Vec<LabelSelector>,
    entities: Vec<Entity>,
    cidrs: Vec<Cidr>,
    peers: Vec<String>,
    evidence: PortEvidence,
    to_ports: Vec<PortRule>,
    http: Vec<HttpMembers>,
}

fn kind_order(p: &PeerRef) -> u8 {
    match p {
        PeerRef::Workload(_) => 0,
        PeerRef::Entity(_) => 1,
        PeerRef::Cidr(_) => 2,
    }
}

/// The rule groups of one side, and the peers and ports whose observed
/// HTTP got no rule (`l7` allows none).
fn groups(
    peers: &BTreeMap<PeerRef, BTreeMap<(u8, u16), PortEvidence>>,
    dir: Dir,
    policy_namespace: &str,
    universe: &Universe,
    chosen: &BTreeMap<u32, selector::Chosen>,
    l7: L7Policy,
) -> (Vec<Group>, Vec<L7Dropped>) {
    let mut by_key: BTreeMap<(u8, String), Group> = BTreeMap::new();
    let mut l7_dropped = Vec::new();
    // Peers by name, so a rule lists them in an order a reader can scan.
    let mut sorted: Vec<(&PeerRef, &Ports)> = peers.iter().collect();
    sorted.sort_by_cached_key(|(p, _)| (kind_order(p), universe.name_of(p)));
    for (peer, ports) in sorted {
        let PeerPorts {
            to_ports,
            http,
            l7_dropped: dropped,
        } = port_rules(peer, ports, dir, l7);
        l7_dropped.extend(dropped.into_iter().map(|p| (universe.name_of(peer), p)));
        let key = (
            kind_order(peer),
            serde_json::to_string(&to_ports).unwrap_or_default(),
        );
        let g = by_key.entry(key).or_default();
        g.to_ports = to_ports;
        for h in http {
            if !g.http.iter().any(|(r, _)| *r == h.0) {
                g.http.push(h);
            } else if let Some(slot) = g.http.iter_mut().find(|(r, _)| *r == h.0) {
                slot.1.extend(h.1);
                slot.1.sort();
                slot.1.dedup();
            }
        }
        g.peers.push(universe.name_of(peer));
        for ev in ports.values() {
            g.evidence.merge(ev.clone());
        }
        match peer {
            PeerRef::Workload(id) => {
                if let (Some(w), Some(c)) = (universe.workloads.get(id), chosen.get(id)) {
                    g.endpoints
                        .push(selector::peer_selector(w, c, policy_namespace));
                }
            }
            PeerRef::Entity(name) => {
                if let Some(e) = entity(name) {
                    g.entities.push(e);
                }
            }
            PeerRef::Cidr(c) => g.cidrs.push(*c),
        }
    }
    (by_key.into_values().collect(), l7_dropped)
}

fn evidence_text(e: &RuleEvidence) -> String {
    format!(
        "{} connections/requests in {} flow(s), {} .. {}; e.g. {}",
        e.connections,
        e.rows,
        format_time(e.first_seen_ns),
        format_time(e.last_seen_ns),
        e.example
    )
}

fn rule_evidence(path: String, dir: Dir, g: &Group) -> RuleEvidence {
    let mut ports: Vec<String> = g
        .to_ports
        .iter()
        .flat_map(|p| {
            p.ports
                .iter()
                .map(|pp| format!("{}/{}", proto_name(proto_of(pp.protocol)), pp.port))
        })
        .collect();
    ports.dedup();
    RuleEvidence {
        path,
        direction: dir,
        peers: g.peers.clone(),
        ports,
        http: g.http.clone(),
        connections: g.evidence.connections,
        rows: g.evidence.rows,
        first_seen_ns: g.evidence.first_seen_ns,
        last_seen_ns: g.evidence.last_seen_ns,
        example: g
            .evidence
            .example
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        default_deny_only: false,
    }
}

fn proto_of(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
        Protocol::Vrrp => 112,
        Protocol::Igmp => 2,
        Protocol::Any => 0,
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// One subject's rules in both directions, with their evidence; a
/// direction with nothing observed gets the empty rule that only keeps it
/// in default deny.
pub(crate) struct SubjectRules {
    pub ingress: Vec<IngressRule>,
    pub egress: Vec<EgressRule>,
    pub evidence: Vec<RuleEvidence>,
    pub l7_dropped: Vec<L7Dropped>,
}

pub(crate) fn subject_rules(
    sides: &Sides,
    subject: Subject,
    policy_namespace: &str,
    universe: &Universe,
    selectors: &BTreeMap<u32, selector::Chosen>,
    l7: L7Policy,
    named: Option<&super::fqdn::ByName>,
) -> SubjectRules {
    let empty = BTreeMap::new();
    let mut out = SubjectRules {
        ingress: Vec::new(),
        egress: Vec::new(),
        evidence: Vec::new(),
        l7_dropped: Vec::new(),
    };
    let side = |dir| sides.get(&(subject, dir)).unwrap_or(&empty);
    let (ingress, dropped) = groups(
        side(Dir::Ingress),
        Dir::Ingress,
        policy_namespace,
        universe,
        selectors,
        l7,
    );
    out.l7_dropped.extend(dropped);
    for g in ingress {
        out.evidence.push(rule_evidence(
            format!("spec.ingress[{}]", out.ingress.len()),
            Dir::Ingress,
            &g,
        ));
        out.ingress.push(IngressRule {
            from_endpoints: non_empty(g.endpoints),
            from_entities: non_empty(g.entities),
            from_cidr: non_empty(g.cidrs),
            to_ports: non_empty(g.to_ports),
            ..IngressRule::default()
        });
    }
    let (egress, dropped) = groups(
        side(Dir::Egress),
        Dir::Egress,
        policy_namespace,
        universe,
        selectors,
        l7,
    );
    out.l7_dropped.extend(dropped);
    for g in egress {
        out.evidence.push(rule_evidence(
            format!("spec.egress[{}]", out.egress.len()),
            Dir::Egress,
            &g,
        ));
        out.egress.push(EgressRule {
            to_endpoints: non_empty(g.endpoints),
            to_entities: non_empty(g.entities),
            to_cidr: non_empty(g.cidrs),
            to_ports: non_empty(g.to_ports),
            ..EgressRule::default()
        });
    }
    for (rule, evidence) in named
        .map(|n| super::fqdn::egress_rules(n, l7, out.egress.len()))
        .unwrap_or_default()
    {
        out.evidence.push(evidence);
        out.egress.push(rule);
    }
    for (dir, list_empty, path) in [
        (Dir::Ingress, out.ingress.is_empty(), "spec.ingress[0]"),
        (Dir::Egress, out.egress.is_empty(), "spec.egress[0]"),
    ] {
        if list_empty {
            out.evidence.push(RuleEvidence {
                path: path.into(),
                direction: dir,
                peers: Vec::new(),
                ports: Vec::new(),
                http: Vec::new(),
                connections: 0,
                rows: 0,
                first_seen_ns: 0,
                last_seen_ns: 0,
                example: String::new(),
                default_deny_only: true,
            });
        }
    }
    if out.ingress.is_empty() {
        out.ingress.push(IngressRule::default());
    }
    if out.egress.is_empty() {
        out.egress.push(EgressRule::default());
    }
    out.evidence.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The annotations of a generated policy: its subject, what its selector
/// matches, and the evidence of every rule.
pub(crate) fn annotations(
    subject: &str,
    blast_radius: &[String],
    evidence: &[RuleEvidence],
) -> BTreeMap<String, String> {
    let mut annotations = BTreeMap::new();
    annotations.insert(format!("{ANNOTATION_PREFIX}subject"), subject.to_string());
    annotations.insert(
        format!("{ANNOTATION_PREFIX}blast-radius"),
        blast_radius.join(", "),
    );
    for e in evidence {
        let text = if e.default_deny_only {
            "nothing observed in this direction: default deny only".to_string()
        } else {
            evidence_text(e)
        };
        annotations.insert(evidence_key(&e.path), text);
    }
    annotations
}

/// Both directions in default deny, spelled explicitly (see the module
/// documentation for the empty rule that spells it for older Cilium).
pub(crate) fn default_deny() -> DefaultDeny {
    DefaultDeny {
        ingress: Some(true),
        egress: Some(true),
    }
}

/// One CNP per subject workload with anything to allow, and the host
/// policy when the host has.
pub(crate) fn policies(
    sides: &Sides,
    fqdns: &super::fqdn::Fqdns,
    universe: &Universe,
    options: &Options,
    warnings: &mut Vec<String>,
) -> Vec<Proposed> {
    let subjects: std::collections::BTreeSet<Subject> = sides.keys().map(|(s, _)| *s).collect();
    let mut names: BTreeMap<(String, String), u32> = BTreeMap::new();
    for s in &subjects {
        if let Some(w) = workload_of(*s, universe) {
            *names
                .entry((w.namespace.clone(), w.workload.clone()))
                .or_default() += 1;
        }
    }
    let selectors = selector::choose_all(universe);
    let mut out = Vec::new();
    for subject in subjects {
        if subject == Subject::Host {
            out.push(super::host::policy(sides, universe, &selectors, warnings));
            continue;
        }
        let Some(w) = workload_of(subject, universe) else {
            continue;
        };
        let Some(chosen) = selectors.get(&w.identity).cloned() else {
            continue;
        };
        let rules = subject_rules(
            sides,
            subject,
            &w.namespace,
            universe,
            &selectors,
            L7Policy::Workload(options.l7),
            fqdns.get(&subject),
        );
        if fqdns.contains_key(&subject) {
            warnings.extend(super::fqdn::visibility_warning(&w.name(), &rules.egress));
        }
        let unique = names
            .get(&(w.namespace.clone(), w.workload.clone()))
            .is_none_or(|n| *n <= 1);
        let name = if unique {
            format!("cnpilot-{}", w.workload)
        } else {
            format!("cnpilot-{}-{}", w.workload, w.identity)
        };
        let policy = CiliumPolicy {
            api_version: ApiVersion::CiliumV2,
            kind: PolicyKind::CiliumNetworkPolicy,
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: Some(w.namespace.clone()),
                labels: [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into(),
                annotations: annotations(&w.name(), &chosen.blast_radius, &rules.evidence),
                other: BTreeMap::new(),
            },
            spec: Some(Rule {
                endpoint_selector: Some(chosen.selector.clone()),
                ingress: Some(rules.ingress),
                egress: Some(rules.egress),
                enable_default_deny: Some(default_deny()),
                ..Rule::default()
            }),
            specs: None,
            status: None,
            description: None,
        };
        out.push(Proposed {
            file_name: format!("{}-{}.yaml", w.namespace, name),
            policy,
            subject: w.name(),
            blast_radius: chosen.blast_radius,
            exact: chosen.exact,
            rules: rules.evidence,
        });
    }
    out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    out
}

fn workload_of(subject: Subject, universe: &Universe) -> Option<&super::Workload> {
    match subject {
        Subject::Workload(id) => universe.workloads.get(&id),
        Subject::Host => None,
    }
}

/// The annotation key of a rule path: `spec.ingress[0]` →
/// `cnpilot.io/evidence.ingress.0` (what `review` and `explain` read).
pub fn evidence_key(path: &str) -> String {
    format!(
        "{ANNOTATION_PREFIX}evidence.{}",
        path.trim_start_matches("spec.")
            .replace(['[', ']'], ".")
            .trim_end_matches('.')
    )
}

/// The YAML file of a proposed policy: a header, then the document.
pub fn render(p: &Proposed) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&p.policy)?;
    Ok(format!(
        "# Generated by `cnpilot recommend` for {} (selector matches: {}).\n# Evidence for every rule is in the cnpilot.io/evidence.* annotations.\n{body}",
        p.subject,
        p.blast_radius.join(", ")
    ))
}
