//! Rules as a reviewer reads them, and what the store says about each.

use std::collections::BTreeMap;

use cnpilot_bpf::maps::Direction;
use cnpilot_learner::aggregate::{format_time, FlowTable};
use cnpilot_recommender::model::{CiliumPolicy, Entity, LabelSelector, LoadedPolicy, PeerRule};
use cnpilot_recommender::synth::requests_of;
use cnpilot_recommender::synth::universe::{peer_identity, Universe};
use cnpilot_recommender::{CompiledPolicy, Outcome, RuleRef};

use super::model::Observed;

/// One ingress/egress rule of a policy with its path.
pub struct RuleView<'a> {
    pub path: String,
    pub direction: Direction,
    pub peer: PeerRule<'a>,
    /// The rule as JSON, to compare rules across policies.
    pub json: String,
}

/// Every allow rule of a policy (`spec` then `specs[N]`).
pub fn rules_of(policy: &CiliumPolicy) -> Vec<RuleView<'_>> {
    let mut out = Vec::new();
    let prefixes = policy.spec.iter().map(|r| ("spec".to_string(), r)).chain(
        policy
            .specs
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| (format!("specs[{i}]"), r)),
    );
    for (prefix, rule) in prefixes {
        for (i, r) in rule.ingress.iter().flatten().enumerate() {
            out.push(RuleView {
                path: format!("{prefix}.ingress[{i}]"),
                direction: Direction::Ingress,
                peer: r.as_peer_rule(),
                json: serde_json::to_string(r).unwrap_or_default(),
            });
        }
        for (i, r) in rule.egress.iter().flatten().enumerate() {
            out.push(RuleView {
                path: format!("{prefix}.egress[{i}]"),
                direction: Direction::Egress,
                peer: r.as_peer_rule(),
                json: serde_json::to_string(r).unwrap_or_default(),
            });
        }
    }
    out
}

/// `app=payments-api in payments`.
pub fn selector_text(sel: &LabelSelector, namespace: Option<&str>) -> String {
    let ns_key = "io.kubernetes.pod.namespace";
    let mut ns = None;
    let mut parts = Vec::new();
    for (k, v) in &sel.match_labels {
        let bare = k.rsplit_once(':').map_or(k.as_str(), |(_, b)| b);
        if bare == ns_key {
            ns = Some(v.clone());
        } else {
            parts.push(format!("{k}={v}"));
        }
    }
    for r in &sel.match_expressions {
        parts.push(format!("{} {:?} {:?}", r.key, r.operator, r.values));
    }
    let labels = if parts.is_empty() {
        "any pod".to_string()
    } else {
        parts.join(",")
    };
    match ns.as_deref().or(namespace) {
        Some(n) => format!("{labels} in {n}"),
        None => format!("{labels} in any namespace"),
    }
}

pub fn entity_name(e: &Entity) -> String {
    serde_json::to_value(e)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{e:?}"))
}

/// Peers, ports and HTTP rules of a rule, as text.
pub fn describe(
    r: &PeerRule<'_>,
    namespace: Option<&str>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut peers: Vec<String> = Vec::new();
    for s in r.endpoints.into_iter().flatten() {
        peers.push(selector_text(s, namespace));
    }
    peers.extend(r.entities.into_iter().flatten().map(entity_name));
    peers.extend(r.cidrs.into_iter().flatten().map(ToString::to_string));
    peers.extend(r.fqdns.into_iter().flatten().filter_map(|f| {
        let (kind, v) = match (&f.match_name, &f.match_pattern) {
            (Some(n), _) => ("name", n),
            (None, Some(p)) => ("pattern", p),
            (None, None) => return None,
        };
        Some(format!("DNS {kind} {v}"))
    }));
    for set in r.cidr_sets.into_iter().flatten() {
        let base = set
            .cidr
            .map_or_else(|| "CIDR group".to_string(), |c| c.to_string());
        if set.except.is_empty() {
            peers.push(base);
        } else {
            let except: Vec<String> = set.except.iter().map(ToString::to_string).collect();
            peers.push(format!("{base} except {}", except.join(", ")));
        }
    }
    peers.extend(
        r.unmodelled_peers
            .iter()
            .flatten()
            .map(|f| format!("{f} (not modelled)")),
    );
    let mut ports = Vec::new();
    let mut http = Vec::new();
    for pr in r.to_ports.into_iter().flatten() {
        for p in &pr.ports {
            let proto = serde_json::to_value(p.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "ANY".into());
            let range = match p.end_port {
                Some(end) => format!("{}-{end}", p.port),
                None => p.port.to_string(),
            };
            ports.push(format!("{proto}/{range}"));
        }
        if let Some(rules) = &pr.rules {
            for h in rules.http.iter().flatten() {
                let method = h
                    .method
                    .as_ref()
                    .map_or("any method", |m| m.source.as_str());
                let path = h.path.as_ref().map_or("any path", |p| p.source.as_str());
                http.push(format!("{method} {path}"));
            }
            if rules.dns.is_some() {
                http.push("dns: the names of rules.dns (checked by the DNS proxy)".into());
            }
        }
    }
    (peers, ports, http)
}

/// A rule with no peer and no port: only there to keep a direction in
/// default deny.
pub fn is_empty_rule(r: &PeerRule<'_>) -> bool {
    r.endpoints.is_none()
        && r.entities.is_none()
        && r.cidrs.is_none()
        && r.cidr_sets.is_none()
        && r.fqdns.is_none()
        && r.to_ports.is_none()
        && r.unmodelled_peers.iter().all(Option::is_none)
}

/// Allows world: `toEntities: [world|all]`, `toCIDR`, `toCIDRSet`.
pub fn allows_world(r: &PeerRule<'_>) -> bool {
    r.entities
        .is_some_and(|es| es.iter().any(|e| matches!(e, Entity::World | Entity::All)))
        || r.cidrs.is_some_and(|c| !c.is_empty())
        || r.cidr_sets.is_some_and(|c| !c.is_empty())
}

/// (file, policy name, rule path): how a compiled rule names its source.
pub type RuleKey = (String, String, String);

pub fn key_of(r: &RuleRef) -> RuleKey {
    (r.file.clone(), r.name.clone(), r.path.clone())
}

pub fn key_for(p: &LoadedPolicy, path: &str) -> RuleKey {
    (
        p.file.clone(),
        p.policy.metadata.name.clone(),
        path.to_string(),
    )
}

/// For every rule of `compiled`, the flows of the table it decides (as an
/// allow) on either side.
pub fn hits(
    table: &FlowTable,
    universe: &Universe,
    compiled: &CompiledPolicy,
) -> BTreeMap<RuleKey, Observed> {
    let mut raw: BTreeMap<RuleKey, (u64, u64, i64, i64)> = BTreeMap::new();
    for row in &table.rows {
        let src = universe.source(row);
        let dst = universe.destination(row);
        let s = peer_identity(&src, compiled);
        let d = peer_identity(&dst, compiled);
        let requests = requests_of(row);
        let reqs: Vec<Option<&cnpilot_recommender::HttpRequest>> = if requests.is_empty() {
            vec![None]
        } else {
            requests.iter().map(Some).collect()
        };
        let mut deciding = Vec::new();
        for http in reqs {
            // The host is a subject too (host policies, compiled for the
            // universe's node): its rules are hit by its flows.
            if src.is_subject() {
                deciding.push(compiled.check(
                    Direction::Egress,
                    s,
                    d,
                    row.proto,
                    row.dst_port,
                    http,
                ));
            }
            if dst.is_subject() {
                deciding.push(compiled.check(
                    Direction::Ingress,
                    d,
                    s,
                    row.proto,
                    row.dst_port,
                    http,
                ));
            }
        }
        let mut keys: Vec<RuleKey> = deciding
            .iter()
            .filter(|side| matches!(side.outcome, Outcome::Allowed | Outcome::L7Allowed))
            .filter_map(|side| side.rule.and_then(|id| compiled.rule(id)))
            .map(key_of)
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let e = raw.entry(k).or_insert((0, 0, i64::MAX, i64::MIN));
            e.0 += 1;
            e.1 += row.connections;
            e.2 = e.2.min(row.first_seen_ns);
            e.3 = e.3.max(row.last_seen_ns);
        }
    }
    raw.into_iter()
        .map(|(k, (flows, connections, first, last))| {
            (
                k,
                Observed {
                    flows,
                    connections,
                    first_seen: format_time(first),
                    last_seen: format_time(last),
                },
            )
        })
        .collect()
}

/// The leading count of an evidence annotation (`20 connections/requests in …`).
pub fn annotated_connections(evidence: &str) -> Option<u64> {
    evidence.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_counts_and_rule_text() {
        assert_eq!(
            annotated_connections("20 connections/requests in 1 flow(s)"),
            Some(20)
        );
        assert_eq!(
            annotated_connections("nothing observed in this direction"),
            None
        );
        let set = cnpilot_recommender::load_str(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: web}\nspec:\n  endpointSelector: {matchLabels: {app: web}}\n  egress:\n  - toEndpoints: [{matchLabels: {app: api, io.kubernetes.pod.namespace: shop}}]\n    toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET, path: /x}]}}]\n  - toEntities: [world]\n  - {}\n",
            "a.yaml",
        )
        .expect("policy");
        let rules = rules_of(&set.policies[0].policy);
        assert_eq!(rules.len(), 3);
        let (peers, ports, http) = describe(&rules[0].peer, Some("web"));
        assert_eq!(peers, ["app=api in shop"]);
        assert_eq!(ports, ["TCP/8080"]);
        assert_eq!(http, ["GET /x"]);
        assert!(!allows_world(&rules[0].peer));
        assert!(allows_world(&rules[1].peer));
        assert!(is_empty_rule(&rules[2].peer));
    }
}
