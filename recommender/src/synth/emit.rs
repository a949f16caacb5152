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
use super::{proto_name, Dir, Options, PortEvidence, Sides};
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

fn merge(into: &mut PortEvidence, from: PortEvidence) {
    if into.rows == 0 {
        *into = from;
        return;
    }
    into.connections += from.connections;
    into.rows += from.rows;
    into.first_seen_ns = into.first_seen_ns.min(from.first_seen_ns);
    into.last_seen_ns = into.last_seen_ns.max(from.last_seen_ns);
    into.plain |= from.plain;
    if into.example.is_none() {
        into.example = from.example;
    }
    for (method, templates) in from.requests {
        let t = into.requests.entry(method).or_default();
        for (template, m) in templates {
            let slot = t.entry(template).or_default();
            slot.paths.extend(m.paths);
            slot.with_query |= m.with_query;
        }
    }
}

/// World destinations: `/32`s, merged into a shorter prefix only when both
/// halves of it were seen on the same ports (so a merged prefix holds only
/// addresses that were all seen), or all cut to `--cidr-prefix`.
pub(crate) fn aggregate_cidrs(sides: &mut Sides, prefix: Option<u8>) {
    for peers in sides.values_mut() {
        let cidrs: Vec<PeerRef> = peers
            .keys()
            .filter(|p| matches!(p, PeerRef::Cidr(c) if c.as_v4().is_some()))
            .cloned()
            .collect();
        if cidrs.is_empty() {
            continue;
        }
        let mut by_prefix: BTreeMap<Cidr, BTreeMap<(u8, u16), PortEvidence>> = BTreeMap::new();
        for peer in cidrs {
            let Some(ports) = peers.remove(&peer) else {
                continue;
            };
            let PeerRef::Cidr(c) = peer else { continue };
            let target = match (prefix, c.as_v4()) {
                (Some(len), Some((net, l))) if len < l => Cidr::v4(net.into(), len),
                _ => c,
            };
            let slot = by_prefix.entry(target).or_default();
            for (port, ev) in ports {
                merge(slot.entry(port).or_default(), ev);
            }
        }
        if prefix.is_none() {
            loop {
                let pair = by_prefix.iter().find_map(|(c, ports)| {
                    let (net, len) = c.as_v4()?;
                    if len == 0 {
                        return None;
                    }
                    let bit = 1u32 << (32 - u32::from(len));
                    let sibling = Cidr::v4((net ^ bit).into(), len);
                    let same_ports = by_prefix
                        .get(&sibling)
                        .is_some_and(|s| s.keys().eq(ports.keys()));
                    same_ports.then(|| (*c, sibling, Cidr::v4(net.into(), len - 1)))
                });
                let Some((a, b, parent)) = pair else { break };
                let mut merged = by_prefix.remove(&a).unwrap_or_default();
                for (port, ev) in by_prefix.remove(&b).unwrap_or_default() {
                    merge(merged.entry(port).or_default(), ev);
                }
                by_prefix.insert(parent, merged);
            }
        }
        for (c, ports) in by_prefix {
            peers.insert(PeerRef::Cidr(c), ports);
        }
    }
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

/// The `toPorts` of one peer, and the HTTP rules with their members.
fn port_rules(
    peer: &PeerRef,
    ports: &BTreeMap<(u8, u16), PortEvidence>,
    dir: Dir,
    mode: L7Mode,
) -> (Vec<PortRule>, Vec<(String, Vec<String>)>) {
    let mut plain = Vec::new();
    let mut dns = Vec::new();
    let mut http = Vec::new();
    let mut members = Vec::new();
    for (&(proto, port), ev) in ports {
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
        // Cilium's DNS proxy sees the queries (the companion `toFQDNs`
        // rules need it); every name is allowed, as observed traffic gives
        // no reason to restrict names yet.
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
    (out, members)
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
    http: Vec<(String, Vec<String>)>,
}

fn kind_order(p: &PeerRef) -> u8 {
    match p {
        PeerRef::Workload(_) => 0,
        PeerRef::Entity(_) => 1,
        PeerRef::Cidr(_) => 2,
    }
}

fn groups(
    peers: &BTreeMap<PeerRef, BTreeMap<(u8, u16), PortEvidence>>,
    dir: Dir,
    policy_namespace: &str,
    universe: &Universe,
    chosen: &BTreeMap<u32, selector::Chosen>,
    mode: L7Mode,
) -> Vec<Group> {
    let mut by_key: BTreeMap<(u8, String), Group> = BTreeMap::new();
    // Peers by name, so a rule lists them in an order a reader can scan.
    let mut sorted: Vec<(&PeerRef, &Ports)> = peers.iter().collect();
    sorted.sort_by_cached_key(|(p, _)| (kind_order(p), universe.name_of(p)));
    for (peer, ports) in sorted {
        let (to_ports, http) = port_rules(peer, ports, dir, mode);
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
            merge(&mut g.evidence, ev.clone());
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
    by_key.into_values().collect()
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

/// One CNP per subject workload with anything to allow.
pub(crate) fn policies(sides: &Sides, universe: &Universe, options: &Options) -> Vec<Proposed> {
    let subjects: std::collections::BTreeSet<u32> = sides.keys().map(|(id, _)| *id).collect();
    let mut names: BTreeMap<(String, String), u32> = BTreeMap::new();
    for id in &subjects {
        if let Some(w) = universe.workloads.get(id) {
            *names
                .entry((w.namespace.clone(), w.workload.clone()))
                .or_default() += 1;
        }
    }
    let empty = BTreeMap::new();
    let selectors = selector::choose_all(universe);
    let mut out = Vec::new();
    for id in subjects {
        let Some(w) = universe.workloads.get(&id) else {
            continue;
        };
        let Some(chosen) = selectors.get(&id).cloned() else {
            continue;
        };
        let mut evidence = Vec::new();
        let mut ingress = Vec::new();
        for g in groups(
            sides.get(&(id, Dir::Ingress)).unwrap_or(&empty),
            Dir::Ingress,
            &w.namespace,
            universe,
            &selectors,
            options.l7,
        ) {
            evidence.push(rule_evidence(
                format!("spec.ingress[{}]", ingress.len()),
                Dir::Ingress,
                &g,
            ));
            ingress.push(IngressRule {
                from_endpoints: non_empty(g.endpoints),
                from_entities: non_empty(g.entities),
                from_cidr: non_empty(g.cidrs),
                to_ports: non_empty(g.to_ports),
                ..IngressRule::default()
            });
        }
        let mut egress = Vec::new();
        for g in groups(
            sides.get(&(id, Dir::Egress)).unwrap_or(&empty),
            Dir::Egress,
            &w.namespace,
            universe,
            &selectors,
            options.l7,
        ) {
            evidence.push(rule_evidence(
                format!("spec.egress[{}]", egress.len()),
                Dir::Egress,
                &g,
            ));
            egress.push(EgressRule {
                to_endpoints: non_empty(g.endpoints),
                to_entities: non_empty(g.entities),
                to_cidr: non_empty(g.cidrs),
                to_ports: non_empty(g.to_ports),
                ..EgressRule::default()
            });
        }
        for (dir, list_empty, path) in [
            (Dir::Ingress, ingress.is_empty(), "spec.ingress[0]"),
            (Dir::Egress, egress.is_empty(), "spec.egress[0]"),
        ] {
            if list_empty {
                evidence.push(RuleEvidence {
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
        if ingress.is_empty() {
            ingress.push(IngressRule::default());
        }
        if egress.is_empty() {
            egress.push(EgressRule::default());
        }
        let unique = names
            .get(&(w.namespace.clone(), w.workload.clone()))
            .is_none_or(|n| *n <= 1);
        let name = if unique {
            format!("cnpilot-{}", w.workload)
        } else {
            format!("cnpilot-{}-{}", w.workload, w.identity)
        };
        let mut annotations = BTreeMap::new();
        annotations.insert(format!("{ANNOTATION_PREFIX}subject"), w.name());
        annotations.insert(
            format!("{ANNOTATION_PREFIX}blast-radius"),
            chosen.blast_radius.join(", "),
        );
        for e in &evidence {
            let key = evidence_key(&e.path);
            let text = if e.default_deny_only {
                "nothing observed in this direction: default deny only".to_string()
            } else {
                evidence_text(e)
            };
            annotations.insert(key, text);
        }
        let policy = CiliumPolicy {
            api_version: ApiVersion::CiliumV2,
            kind: PolicyKind::CiliumNetworkPolicy,
            metadata: ObjectMeta {
                name: name.clone(),
                namespace: Some(w.namespace.clone()),
                labels: [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into(),
                annotations,
                other: BTreeMap::new(),
            },
            spec: Some(Rule {
                endpoint_selector: Some(chosen.selector.clone()),
                ingress: Some(ingress),
                egress: Some(egress),
                enable_default_deny: Some(DefaultDeny {
                    ingress: Some(true),
                    egress: Some(true),
                }),
                ..Rule::default()
            }),
            specs: None,
            status: None,
            description: None,
        };
        evidence.sort_by(|a, b| a.path.cmp(&b.path));
        out.push(Proposed {
            file_name: format!("{}-{}.yaml", w.namespace, name),
            policy,
            subject: w.name(),
            blast_radius: chosen.blast_radius,
            exact: chosen.exact,
            rules: evidence,
        });
    }
    out.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    out
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
