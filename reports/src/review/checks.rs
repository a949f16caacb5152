//! Checks that need the evaluator: HTTP rules shadowed by a plain allow,
//! and one-sided rules in the current policies (one side allows, the other
//! side's default deny drops the flow anyway).

use std::collections::{BTreeMap, BTreeSet};

use cnpilot_bpf::maps::Direction;
use cnpilot_learner::aggregate::FlowTable;
use cnpilot_learner::identity::{Labels, NAMESPACE_LABEL};
use cnpilot_recommender::model::{
    CiliumPolicy, EgressRule, IngressRule, LabelSelector, PolicySet, Protocol, Rule,
};
use cnpilot_recommender::proof::decide;
use cnpilot_recommender::synth::universe::{PeerRef, Universe, Workload};
use cnpilot_recommender::synth::{proto_name, requests_of};
use cnpilot_recommender::{CompiledPolicy, HttpRequest, Outcome, Side};

use super::model::Finding;
use super::rules::{rules_of, selector_text};

/// Numbers above any real workload identity, for the stand-in workloads.
const SYNTHETIC_BASE: u32 = 900_000;

/// Stand-in workloads for the policies' own selectors: one per distinct
/// `matchLabels` subject or peer (with its namespace), so that a rule can
/// be checked against the peers it names without a flow store.
/// Selectors with expressions or no labels are skipped: they name no
/// particular workload.
pub fn synthetic_universe(sets: &[&PolicySet]) -> Universe {
    let mut seen: BTreeSet<(String, Vec<(String, String)>)> = BTreeSet::new();
    let mut add = |sel: &LabelSelector, namespace: Option<&str>| {
        if !sel.match_expressions.is_empty() || sel.match_labels.is_empty() {
            return;
        }
        let mut ns = namespace.map(str::to_string);
        let mut labels = Vec::new();
        for (k, v) in &sel.match_labels {
            let bare = k.rsplit_once(':').map_or(k.as_str(), |(_, b)| b);
            if bare == NAMESPACE_LABEL {
                ns = Some(v.clone());
            } else if k.starts_with("reserved:") {
                return;
            } else {
                labels.push((bare.to_string(), v.clone()));
            }
        }
        let Some(ns) = ns else { return };
        seen.insert((ns, labels));
    };
    for set in sets {
        for p in &set.policies {
            let ns = p.policy.scope_namespace();
            for rule in p.policy.rules() {
                if let Some(sel) = &rule.endpoint_selector {
                    add(sel, ns);
                }
            }
            for r in rules_of(&p.policy) {
                for sel in r.peer.endpoints.into_iter().flatten() {
                    add(sel, ns);
                }
            }
        }
    }
    let mut u = Universe::default();
    for (i, (ns, labels)) in seen.into_iter().enumerate() {
        let id = SYNTHETIC_BASE + i as u32;
        // Named as the workload usually is: by its app label.
        let name = labels
            .iter()
            .find(|(k, _)| matches!(k.as_str(), "app" | "k8s-app" | "app.kubernetes.io/name"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| {
                if labels.is_empty() {
                    "*".to_string()
                } else {
                    labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                }
            });
        let mut l = Labels::new();
        for (k, v) in &labels {
            l.insert(k.clone(), v.clone());
        }
        l.insert(NAMESPACE_LABEL, ns.clone());
        u.workloads.insert(
            id,
            Workload {
                identity: id,
                namespace: ns,
                workload: name,
                labels: l,
            },
        );
    }
    u
}

/// Every numbered (proto, port) the policies mention.
fn mentioned_ports(sets: &[&PolicySet]) -> BTreeSet<(u8, u16)> {
    let mut out = BTreeSet::new();
    for set in sets {
        for p in &set.policies {
            for r in rules_of(&p.policy) {
                for pr in r.peer.to_ports.into_iter().flatten() {
                    for pp in &pr.ports {
                        if let Some((lo, _)) = pp.range().filter(|(lo, _)| *lo > 0) {
                            let protos: &[u8] = match pp.protocol {
                                Protocol::Any => &[6],
                                other => other.ip_protos(),
                            };
                            out.extend(protos.iter().map(|pr| (*pr, lo)));
                        }
                    }
                }
            }
        }
    }
    out
}

fn rule_text(compiled: &CompiledPolicy, side: &Side) -> String {
    side.rule
        .and_then(|id| compiled.rule(id))
        .map_or_else(|| "a rule".to_string(), ToString::to_string)
}

fn explicit(s: &Side) -> bool {
    matches!(s.outcome, Outcome::Allowed | Outcome::L7Allowed)
}

fn denied(s: &Side) -> bool {
    matches!(s.outcome, Outcome::DefaultDeny | Outcome::DenyRule)
}

/// One side explicitly allows, the other denies: a finding keyed by the
/// allowing rule, the flow's ends and port.
fn one_sided(
    compiled: &CompiledPolicy,
    src_name: &str,
    dst_name: &str,
    proto: u8,
    port: u16,
    egress: &Side,
    ingress: &Side,
) -> Option<Finding> {
    let flow = format!("{src_name} -> {dst_name} {}/{port}", proto_name(proto));
    let (what, allowing, denying, fix) = if explicit(egress) && denied(ingress) {
        (
            format!("egress of {src_name} allows {flow}, ingress of {dst_name} denies it"),
            egress,
            ingress,
            format!(
                "allow it on {dst_name}'s ingress too (fromEndpoints: {src_name}, toPorts: {port}/{}), or drop the egress rule if the flow is not wanted",
                proto_name(proto)
            ),
        )
    } else if explicit(ingress) && denied(egress) {
        (
            format!("ingress of {dst_name} allows {flow}, egress of {src_name} denies it"),
            ingress,
            egress,
            format!(
                "allow it on {src_name}'s egress too (toEndpoints: {dst_name}, toPorts: {port}/{}), or drop the ingress rule if the flow is not wanted",
                proto_name(proto)
            ),
        )
    } else {
        return None;
    };
    let how = if denying.outcome == Outcome::DefaultDeny {
        "default deny of"
    } else {
        "deny rule"
    };
    Some(Finding {
        what,
        allowed_by: rule_text(compiled, allowing),
        denied_by: format!("{how} {}", rule_text(compiled, denying)),
        fix,
        observed_connections: 0,
    })
}

/// One-sided rules of `current`: checked on the policies' own peers, and on
/// the store's flows when given (which adds how many connections it cost).
pub fn one_sided_findings(current: &PolicySet, table: Option<&FlowTable>) -> Vec<Finding> {
    let mut found: BTreeMap<(String, String), Finding> = BTreeMap::new();
    let synthetic = synthetic_universe(&[current]);
    let compiled = CompiledPolicy::compile(current, &synthetic.identity_inputs(), None);
    let ports = mentioned_ports(&[current]);
    for a in synthetic.workloads.values() {
        for b in synthetic.workloads.values() {
            for &(proto, port) in &ports {
                let (src, dst) = (PeerRef::Workload(a.identity), PeerRef::Workload(b.identity));
                let (_, eg, ing) = decide(&compiled, &src, &dst, proto, port, &[]);
                if let Some(f) = one_sided(&compiled, &a.name(), &b.name(), proto, port, &eg, &ing)
                {
                    found
                        .entry((f.allowed_by.clone(), f.what.clone()))
                        .or_insert(f);
                }
            }
        }
    }
    let synthetic_keys: BTreeSet<(String, String)> = found.keys().cloned().collect();
    if let Some(table) = table {
        let u = Universe::from_table(table);
        let compiled = CompiledPolicy::compile(current, &u.identity_inputs(), None);
        for row in &table.rows {
            let (src, dst) = (u.source(row), u.destination(row));
            let (_, eg, ing) = decide(
                &compiled,
                &src,
                &dst,
                row.proto,
                row.dst_port,
                &requests_of(row),
            );
            let Some(f) = one_sided(
                &compiled,
                &u.name_of(&src),
                &u.name_of(&dst),
                row.proto,
                row.dst_port,
                &eg,
                &ing,
            ) else {
                continue;
            };
            let slot = found
                .entry((f.allowed_by.clone(), f.what.clone()))
                .or_insert(f);
            slot.observed_connections += row.connections;
        }
    }
    // A rule the store shows failing on real flows needs no stand-in
    // finding as well.
    let seen_rules: BTreeSet<String> = found
        .iter()
        .filter(|(k, _)| !synthetic_keys.contains(*k))
        .map(|(k, _)| k.0.clone())
        .collect();
    found.retain(|k, _| !synthetic_keys.contains(k) || !seen_rules.contains(&k.0));
    let mut out: Vec<Finding> = found.into_values().collect();
    out.sort_by(|a, b| {
        b.observed_connections
            .cmp(&a.observed_connections)
            .then(a.what.cmp(&b.what))
    });
    out
}

/// A request no HTTP rule is expected to allow: if a side still allows it
/// at a port that has HTTP rules, a plain L3/L4 allow decided first.
fn probe_request() -> HttpRequest {
    HttpRequest {
        method: "CNPILOT-SHADOW-PROBE".into(),
        path: "/cnpilot/shadow-probe".into(),
        ..HttpRequest::default()
    }
}

/// HTTP rules of `proposed` made ineffective by a plain allow on the same
/// subject, peer and port (in the proposal itself or in `current`): keyed
/// by (file, policy name, rule path), the message names the shadowing rule.
pub fn shadowed_l7(
    proposed: &PolicySet,
    current: &PolicySet,
    universe: &Universe,
) -> BTreeMap<(String, String, String), String> {
    let mut out = BTreeMap::new();
    let ids = universe.identity_inputs();
    let mut both = current.clone();
    both.extend(proposed.clone());
    let combined = CompiledPolicy::compile(&both, &ids, None);
    let probe = probe_request();
    for p in &proposed.policies {
        let l7_rules: Vec<_> = rules_of(&p.policy)
            .into_iter()
            .filter(|r| {
                r.peer
                    .to_ports
                    .into_iter()
                    .flatten()
                    .any(|pr| pr.rules.as_ref().is_some_and(|l| l.http.is_some()))
            })
            .collect();
        if l7_rules.is_empty() {
            continue;
        }
        for r in &l7_rules {
            // This rule alone: which (subject, peer, port) its HTTP rules
            // cover, without the plain allows that might shadow them.
            let mut only = p.clone();
            only.policy = isolate(&p.policy, &r.path);
            let alone = CompiledPolicy::compile(
                &PolicySet {
                    policies: vec![only],
                    warnings: Vec::new(),
                },
                &ids,
                None,
            );
            let ports: Vec<(u8, u16)> = r
                .peer
                .to_ports
                .into_iter()
                .flatten()
                .filter(|pr| pr.rules.as_ref().is_some_and(|l| l.http.is_some()))
                .flat_map(|pr| pr.ports.iter())
                .filter_map(|pp| {
                    let (lo, _) = pp.range()?;
                    let proto = pp.protocol.ip_protos().first().copied().unwrap_or(6);
                    Some((proto, lo))
                })
                .collect();
            'search: for s in universe.workloads.values() {
                for peer in universe.workloads.values() {
                    for &(proto, port) in &ports {
                        let covered =
                            alone.check(r.direction, s.identity, peer.identity, proto, port, None);
                        let is_this_rule = covered
                            .rule
                            .and_then(|id| alone.rule(id))
                            .is_some_and(|rr| rr.path == r.path);
                        if covered.outcome != Outcome::L7Allowed || !is_this_rule {
                            continue;
                        }
                        let side = combined.check(
                            r.direction,
                            s.identity,
                            peer.identity,
                            proto,
                            port,
                            Some(&probe),
                        );
                        if side.outcome == Outcome::Allowed {
                            let dir = if r.direction == Direction::Egress {
                                "egress"
                            } else {
                                "ingress"
                            };
                            out.insert(
                                (p.file.clone(), p.policy.metadata.name.clone(), r.path.clone()),
                                format!(
                                    "HTTP rules on {}/{port} are ineffective for {} ({dir}, peer {}): {} allows the port at L3/L4, and a plain allow wins over HTTP rules",
                                    proto_name(proto),
                                    s.name(),
                                    peer.name(),
                                    rule_text(&combined, &side)
                                ),
                            );
                            break 'search;
                        }
                    }
                }
            }
        }
    }
    out
}

/// `policy` with every allow rule but the one at `path` emptied (`{}`
/// allows nothing), so rule paths stay what they were.
fn isolate(policy: &CiliumPolicy, path: &str) -> CiliumPolicy {
    let mut out = policy.clone();
    let blank = |prefix: &str, rule: &mut Rule| {
        for (i, r) in rule.ingress.iter_mut().flatten().enumerate() {
            if format!("{prefix}.ingress[{i}]") != path {
                *r = IngressRule::default();
            }
        }
        for (i, r) in rule.egress.iter_mut().flatten().enumerate() {
            if format!("{prefix}.egress[{i}]") != path {
                *r = EgressRule::default();
            }
        }
    };
    if let Some(rule) = out.spec.as_mut() {
        blank("spec", rule);
    }
    for (i, rule) in out.specs.iter_mut().flatten().enumerate() {
        blank(&format!("specs[{i}]"), rule);
    }
    out
}

/// Workloads of `universe` a policy's subject selector matches.
pub fn selected_workloads(
    p: &cnpilot_recommender::model::LoadedPolicy,
    universe: &Universe,
) -> Vec<String> {
    use cnpilot_recommender::select::{LabelSet, Selector};
    let ns = p.policy.scope_namespace();
    let mut out = Vec::new();
    for w in universe.workloads.values() {
        let labels: BTreeMap<String, String> = w
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let set = LabelSet::for_pod(&w.namespace, &labels);
        let hit = p.policy.rules().any(|r| {
            r.endpoint_selector
                .as_ref()
                .is_some_and(|sel| Selector::subject(sel, ns).matches(&set))
        });
        if hit {
            out.push(w.name());
        }
    }
    out.sort();
    // A host policy selects the host of the nodes that recorded host flows
    // (their labels are not in the store: a selector needing one matches
    // none), one entry so that it does not read as several workloads.
    let node = LabelSet::for_node(&universe.node_input().labels);
    let host = !universe.host_nodes.is_empty()
        && p.policy.rules().any(|r| {
            r.node_selector
                .as_ref()
                .is_some_and(|sel| Selector::new(sel).matches(&node))
        });
    if host {
        let nodes: Vec<&str> = universe.host_nodes.iter().map(String::as_str).collect();
        out.push(format!("host ({})", nodes.join(" ")));
    }
    out
}

/// For messages: a selector as text.
pub fn subject_text(p: &cnpilot_recommender::model::LoadedPolicy) -> String {
    p.policy
        .rules()
        .find_map(|r| r.endpoint_selector.as_ref())
        .map_or_else(
            || "nodes".to_string(),
            |s| selector_text(s, p.policy.scope_namespace()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> PolicySet {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cli/policies/seed");
        cnpilot_recommender::load_paths(&[dir]).expect("seed policies")
    }

    #[test]
    fn the_articles_prometheus_rule_is_one_sided_without_a_store() {
        let findings = one_sided_findings(&seed(), None);
        let prom = findings
            .iter()
            .find(|f| {
                f.what.starts_with("egress of tenant-a/")
                    && f.what.contains("monitoring/prometheus TCP/9090")
            })
            .unwrap_or_else(|| panic!("no prometheus finding in {findings:#?}"));
        assert!(
            prom.allowed_by.contains("tenant-a-rules spec.egress[1]"),
            "{}",
            prom.allowed_by
        );
        assert!(
            prom.denied_by.contains("default-deny-all"),
            "{}",
            prom.denied_by
        );
        assert!(
            prom.fix.contains("monitoring/prometheus's ingress"),
            "{}",
            prom.fix
        );
        // Within a tenant both sides allow: no finding.
        assert!(!findings
            .iter()
            .any(|f| f.what.contains("tenant-a/* -> tenant-a/")));
    }

    #[test]
    fn a_plain_allow_shadows_http_rules_on_the_same_peer_and_port() {
        let text = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: api, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: api}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: '8080', protocol: TCP}], rules: {http: [{method: GET, path: /x}]}}]\n";
        let proposed = cnpilot_recommender::load_str(text, "api.yaml").expect("policy");
        let u = synthetic_universe(&[&proposed]);
        assert!(shadowed_l7(&proposed, &PolicySet::default(), &u).is_empty());
        let plain = text
            .replace("name: api,", "name: api-plain,")
            .replace(", rules: {http: [{method: GET, path: /x}]}", "");
        let current = cnpilot_recommender::load_str(&plain, "plain.yaml").expect("policy");
        let shadowed = shadowed_l7(&proposed, &current, &u);
        let msg = shadowed
            .get(&(
                "api.yaml".to_string(),
                "api".to_string(),
                "spec.ingress[0]".to_string(),
            ))
            .unwrap_or_else(|| panic!("not shadowed: {shadowed:?}"));
        assert!(msg.contains("api-plain spec.ingress[0]"), "{msg}");
    }
}
