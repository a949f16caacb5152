//! Expanding each rule into (subject, peer, proto, port) entries.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use cnpilot_bpf::maps::{action, identity, Direction, PolicyKey, PolicyValue, SubjectKey};

use super::fqdn::{collect_fqdn_selectors, fqdn_addrs, fqdn_matches};
use super::lookup::PrefixTable;
use super::ports::{ports_of, IPPROTO_TCP, IPPROTO_UDP, L7};
use super::{CompiledPolicy, FqdnInput, IdentityInput, NodeInput, RuleRef, CIDR_IDENTITY_BASE};
use crate::model::{Cidr, CidrRule, Entity, LoadedPolicy, PeerRule, PolicySet, PortSpec, Rule};
use crate::select::{LabelSet, Selector};

/// Every identity a peer selector can pick, with its labels.
struct Universe {
    /// (id, labels, named ports) of pods and reserved identities.
    ids: Vec<(u32, LabelSet, BTreeMap<String, u16>)>,
    pods: BTreeSet<u32>,
    cidrs: Vec<(Cidr, u32)>,
    /// World /32s from DNS answers: (address, identity, names).
    fqdns: Vec<(Ipv4Addr, u32, Vec<String>)>,
}

const RESERVED: &[(u32, &str)] = &[
    (identity::HOST, "host"),
    (identity::WORLD, "world"),
    (identity::UNMANAGED, "unmanaged"),
    (identity::HEALTH, "health"),
    (identity::INIT, "init"),
    (identity::REMOTE_NODE, "remote-node"),
    (identity::KUBE_APISERVER, "kube-apiserver"),
    (identity::INGRESS, "ingress"),
];

enum Peers {
    Any,
    Ids(BTreeSet<u32>),
}

pub(super) fn compile(
    set: &PolicySet,
    identities: &[IdentityInput],
    local_node: Option<&NodeInput>,
    fqdn_inputs: &[FqdnInput],
) -> CompiledPolicy {
    let mut out = CompiledPolicy::default();
    let cidrs = collect_cidrs(set);
    let fqdns = fqdn_addrs(identities, fqdn_inputs, &mut out.warnings);
    let universe = Universe {
        ids: identities
            .iter()
            .map(|i| {
                (
                    i.id,
                    LabelSet::for_pod(&i.namespace, &i.labels),
                    i.named_ports.clone(),
                )
            })
            .chain(
                RESERVED
                    .iter()
                    .map(|(id, name)| (*id, LabelSet::reserved(name), BTreeMap::new())),
            )
            .chain(
                cidrs
                    .iter()
                    .map(|(_, id)| *id)
                    .chain(fqdns.iter().map(|(_, id, _)| *id))
                    .collect::<BTreeSet<u32>>()
                    .into_iter()
                    .map(|id| (id, LabelSet::reserved("world"), BTreeMap::new())),
            )
            .collect(),
        pods: identities.iter().map(|i| i.id).collect(),
        cidrs: cidrs.clone(),
        fqdns,
    };
    out.endpoint_ids = universe.pods.clone();
    out.cidr_ids = cidrs;
    out.endpoint_addrs = identities
        .iter()
        .flat_map(|i| i.addrs.iter().map(move |a| (*a, i.id)))
        .collect();
    out.fqdn_addrs = universe.fqdns.iter().map(|(a, id, _)| (*a, *id)).collect();
    out.fqdn_selectors = collect_fqdn_selectors(set);
    out.ipcache = PrefixTable::new(
        &out.cidr_ids,
        &out.endpoint_addrs
            .iter()
            .chain(&out.fqdn_addrs)
            .copied()
            .collect::<Vec<_>>(),
    );

    // The agent's allow-localhost: the local host may always reach its pods.
    let localhost = push_rule(
        &mut out,
        RuleRef {
            kind: "",
            namespace: None,
            name: String::new(),
            file: String::new(),
            line: 0,
            path: "allow-localhost (agent default: the node may reach its own pods)".into(),
            unmodelled: vec![],
        },
    );
    for id in &universe.pods {
        let key = PolicyKey {
            subject: *id,
            peer: identity::HOST,
            dport: 0,
            proto: 0,
            direction: Direction::Ingress as u8,
        };
        out.entries.insert(
            key,
            PolicyValue {
                action: action::ALLOW,
                pad: 0,
                proxy_port: 0,
                rule_id: localhost,
            },
        );
    }
    let node_labels = local_node.map(|n| LabelSet::for_node(&n.labels));

    for loaded in &set.policies {
        let ns = loaded.policy.scope_namespace().map(str::to_string);
        let spec_paths = loaded.policy.spec.iter().map(|r| ("spec".to_string(), r));
        let specs_paths = loaded
            .policy
            .specs
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| (format!("specs[{i}]"), r));
        for (path, rule) in spec_paths.chain(specs_paths) {
            let subjects = subjects_of(rule, ns.as_deref(), &universe, node_labels.as_ref());
            if subjects.is_empty() {
                continue;
            }
            compile_rule(
                &mut out,
                &universe,
                loaded,
                ns.as_deref(),
                &path,
                rule,
                &subjects,
            );
        }
    }
    warn_fqdns_without_dns(&mut out);
    out
}

/// A `toFQDNs` rule learns its addresses from DNS answers, and (here as in
/// Cilium) only answers to queries a `rules.dns` rule sent through the DNS
/// proxy teach them. When none of the rule's endpoints has such a rule on
/// its egress, their own lookups teach it nothing: it allows only what
/// another endpoint's DNS rule happened to teach. Said once per rule.
fn warn_fqdns_without_dns(out: &mut CompiledPolicy) {
    for (rule_id, subjects) in std::mem::take(&mut out.fqdn_rules) {
        if subjects.iter().any(|s| out.dns_subjects.contains(s)) {
            continue;
        }
        let Some(rule) = out.rules.get(rule_id as usize).map(ToString::to_string) else {
            continue;
        };
        out.warnings.push(format!(
            "{rule}: toFQDNs, but no rules.dns on its endpoints' egress sends their lookups \
             through the DNS proxy: their own lookups teach it no address (as on Cilium), so it \
             allows only what another endpoint's DNS rule has taught; add a rules.dns rule \
             toward the DNS server (e.g. matchPattern \"*\")"
        ));
    }
}

fn push_rule(out: &mut CompiledPolicy, rule: RuleRef) -> u32 {
    out.rules.push(rule);
    (out.rules.len() - 1) as u32
}

fn rule_ref(loaded: &LoadedPolicy, path: String, unmodelled: Vec<&'static str>) -> RuleRef {
    RuleRef {
        kind: loaded.policy.kind.as_str(),
        namespace: loaded
            .policy
            .metadata
            .namespace
            .clone()
            .filter(|_| loaded.policy.scope_namespace().is_some()),
        name: loaded.policy.metadata.name.clone(),
        file: loaded.file.clone(),
        line: loaded.line,
        path,
        unmodelled,
    }
}

fn subjects_of(rule: &Rule, ns: Option<&str>, u: &Universe, node: Option<&LabelSet>) -> Vec<u32> {
    if let Some(sel) = &rule.endpoint_selector {
        let s = Selector::subject(sel, ns);
        u.ids
            .iter()
            .filter(|(id, labels, _)| u.pods.contains(id) && s.matches(labels))
            .map(|(id, _, _)| *id)
            .collect()
    } else if let (Some(sel), Some(node)) = (&rule.node_selector, node) {
        if Selector::new(sel).matches(node) {
            vec![identity::HOST]
        } else {
            vec![]
        }
    } else {
        vec![]
    }
}

fn compile_rule(
    out: &mut CompiledPolicy,
    u: &Universe,
    loaded: &LoadedPolicy,
    ns: Option<&str>,
    path: &str,
    rule: &Rule,
    subjects: &[u32],
) {
    let dd = rule.enable_default_deny.unwrap_or_default();
    let ingress_rules: Vec<PeerRule> = rule
        .ingress
        .iter()
        .flatten()
        .map(|r| r.as_peer_rule())
        .collect();
    let ingress_deny: Vec<PeerRule> = rule
        .ingress_deny
        .iter()
        .flatten()
        .map(|r| r.as_peer_rule())
        .collect();
    let egress_rules: Vec<PeerRule> = rule
        .egress
        .iter()
        .flatten()
        .map(|r| r.as_peer_rule())
        .collect();
    let egress_deny: Vec<PeerRule> = rule
        .egress_deny
        .iter()
        .flatten()
        .map(|r| r.as_peer_rule())
        .collect();
    let sections = [
        (Direction::Ingress, "ingress", &ingress_rules, false),
        (Direction::Ingress, "ingressDeny", &ingress_deny, true),
        (Direction::Egress, "egress", &egress_rules, false),
        (Direction::Egress, "egressDeny", &egress_deny, true),
    ];
    for (dir, has, explicit) in [
        (
            Direction::Ingress,
            !ingress_rules.is_empty() || !ingress_deny.is_empty(),
            dd.ingress,
        ),
        (
            Direction::Egress,
            !egress_rules.is_empty() || !egress_deny.is_empty(),
            dd.egress,
        ),
    ] {
        if !has && explicit.is_none() {
            continue;
        }
        let id = push_rule(out, rule_ref(loaded, path.to_string(), vec![]));
        for s in subjects {
            let info = out
                .subjects
                .entry(SubjectKey {
                    identity: *s,
                    direction: dir as u32,
                })
                .or_default();
            info.default_deny |= explicit.unwrap_or(has);
            info.selected_by.push(id);
        }
    }
    for (dir, name, rules, deny) in sections {
        for (i, pr) in rules.iter().enumerate() {
            let mut unmodelled: Vec<&'static str> =
                pr.unmodelled_peers.iter().flatten().copied().collect();
            let peers = peers_of(pr, u, ns);
            let ports = ports_of(pr, &mut unmodelled);
            let id = push_rule(
                out,
                rule_ref(loaded, format!("{path}.{name}[{i}]"), unmodelled),
            );
            warn_dns_not_proxied(out, id, &ports);
            if !deny && dir == Direction::Egress {
                if pr.fqdns.is_some() {
                    out.fqdn_rules.push((id, subjects.to_vec()));
                }
                if ports.iter().any(|(_, l7)| matches!(l7, L7::Dns(_))) {
                    out.dns_subjects.extend(subjects.iter().copied());
                }
            }
            for (l4, l7) in &ports {
                for s in subjects {
                    for (peer, proto, port) in expand_peers_ports(&peers, l4, *s, dir, u, out) {
                        let key = PolicyKey {
                            subject: *s,
                            peer,
                            dport: port,
                            proto,
                            direction: dir as u8,
                        };
                        insert(out, key, deny, l7, id);
                    }
                }
            }
        }
    }
}

/// `rules.dns` on a protocol the DNS proxy does not answer (SCTP under
/// `ANY`): said once per rule, as the rule's ALLOW entries pass every name
/// there.
fn warn_dns_not_proxied(
    out: &mut CompiledPolicy,
    rule_id: u32,
    ports: &[(Vec<(u8, PortSpec)>, L7)],
) {
    let mut protos: Vec<&str> = ports
        .iter()
        .filter(|(_, l7)| matches!(l7, L7::Dns(_)))
        .flat_map(|(l4, _)| l4.iter().map(|(p, _)| *p))
        .filter_map(|p| match p {
            132 => Some("SCTP"),
            _ => None,
        })
        .collect();
    protos.sort_unstable();
    protos.dedup();
    let Some(rule) = out.rules.get(rule_id as usize).map(ToString::to_string) else {
        return;
    };
    for proto in protos {
        out.warnings.push(format!(
            "{rule}: rules.dns over {proto}: allowed at L4, query names not checked"
        ));
    }
}

fn insert(out: &mut CompiledPolicy, key: PolicyKey, deny: bool, l7: &L7, rule_id: u32) {
    // The DNS proxy answers UDP and TCP: DNS over anything else is allowed
    // at L4 (`warn_dns_not_proxied` says so).
    let dns = matches!(l7, L7::Dns(_)) && matches!(key.proto, IPPROTO_UDP | IPPROTO_TCP);
    let act = match (deny, l7) {
        (true, _) => action::DENY,
        (false, L7::Http(_)) => action::REDIRECT,
        (false, L7::Dns(_)) if dns => action::REDIRECT,
        (false, _) => action::ALLOW,
    };
    let rank = |a: u8| match a {
        action::DENY => 3,
        action::ALLOW => 2,
        _ => 1,
    };
    let value = PolicyValue {
        action: act,
        pad: 0,
        proxy_port: match act {
            action::REDIRECT if dns => out.dns_proxy_port,
            action::REDIRECT => out.proxy_port,
            _ => 0,
        },
        rule_id,
    };
    out.entries
        .entry(key)
        .and_modify(|v| {
            if rank(act) > rank(v.action) {
                *v = value
            }
        })
        .or_insert(value);
    match l7 {
        L7::Http(rules) if !deny => {
            let list = out.l7.entry(key).or_default();
            list.extend(rules.iter().map(|r| (rule_id, Arc::new(r.clone()))));
        }
        L7::Dns(rules) if dns && !deny => {
            let list = out.dns.entry(key).or_default();
            list.extend(rules.iter().map(|r| (rule_id, Arc::new(r.clone()))));
        }
        _ => {}
    }
}

/// Expand named ports and produce (peer, proto, port) triples.
fn expand_peers_ports(
    peers: &Peers,
    l4: &[(u8, PortSpec)],
    subject: u32,
    dir: Direction,
    u: &Universe,
    out: &mut CompiledPolicy,
) -> Vec<(u32, u8, u16)> {
    let peer_ids: Vec<u32> = match peers {
        Peers::Any => vec![identity::ANY],
        Peers::Ids(ids) => ids.iter().copied().collect(),
    };
    let named = |id: u32, name: &str| {
        u.ids
            .iter()
            .find(|(i, _, _)| *i == id)
            .and_then(|(_, _, n)| n.get(name).copied())
    };
    let mut triples = Vec::new();
    for &peer in &peer_ids {
        for (proto, port) in l4 {
            match port {
                PortSpec::Number(p) => triples.push((peer, *proto, *p)),
                PortSpec::Named(name) => {
                    // A named port is the destination pod's: the subject's on
                    // ingress, the peer's on egress (any pod's for peer ANY).
                    let owners: Vec<u32> = match (dir, peer) {
                        (Direction::Ingress, _) => vec![subject],
                        (Direction::Egress, identity::ANY) => u.pods.iter().copied().collect(),
                        (Direction::Egress, p) => vec![p],
                    };
                    let ports: BTreeSet<u16> =
                        owners.iter().filter_map(|o| named(*o, name)).collect();
                    if ports.is_empty() {
                        out.warnings.push(format!(
                            "named port `{name}` is not defined by identity {}",
                            owners.first().unwrap_or(&0)
                        ));
                    }
                    triples.extend(ports.into_iter().map(|p| (peer, *proto, p)));
                }
            }
        }
    }
    triples
}

fn peers_of(pr: &PeerRule, u: &Universe, ns: Option<&str>) -> Peers {
    let nonempty = |n: Option<usize>| n.is_some_and(|n| n > 0);
    let has_l3 = nonempty(pr.endpoints.map(<[_]>::len))
        || nonempty(pr.entities.map(<[_]>::len))
        || nonempty(pr.cidrs.map(<[_]>::len))
        || nonempty(pr.cidr_sets.map(<[_]>::len))
        || pr.fqdns.is_some()
        || pr
            .unmodelled_peers
            .iter()
            .flatten()
            .any(|f| *f != "authentication");
    if !has_l3 {
        // An L4-only rule selects every peer; an empty rule selects none.
        return if nonempty(pr.to_ports.map(<[_]>::len)) || nonempty(pr.icmps.map(<[_]>::len)) {
            Peers::Any
        } else {
            Peers::Ids(BTreeSet::new())
        };
    }
    let mut ids = BTreeSet::new();
    for sel in pr.endpoints.unwrap_or_default() {
        let s = Selector::peer(sel, ns);
        ids.extend(
            u.ids
                .iter()
                .filter(|(_, l, _)| s.matches(l))
                .map(|(i, _, _)| *i),
        );
    }
    for e in pr.entities.unwrap_or_default() {
        match e {
            Entity::All => return Peers::Any,
            Entity::World => {
                ids.insert(identity::WORLD);
                ids.extend(u.cidrs.iter().map(|(_, i)| *i));
                ids.extend(u.fqdns.iter().map(|(_, i, _)| *i));
            }
            Entity::Cluster => {
                ids.extend(&u.pods);
                ids.extend([
                    identity::HOST,
                    identity::REMOTE_NODE,
                    identity::INIT,
                    identity::HEALTH,
                    identity::UNMANAGED,
                    identity::INGRESS,
                    identity::KUBE_APISERVER,
                ]);
            }
            Entity::Host => _ = ids.insert(identity::HOST),
            Entity::RemoteNode => _ = ids.insert(identity::REMOTE_NODE),
            Entity::KubeApiserver => _ = ids.insert(identity::KUBE_APISERVER),
            Entity::Init => _ = ids.insert(identity::INIT),
            Entity::Ingress => _ = ids.insert(identity::INGRESS),
            Entity::Unmanaged => _ = ids.insert(identity::UNMANAGED),
            Entity::Health => _ = ids.insert(identity::HEALTH),
            Entity::None => {}
        }
    }
    let sets = pr
        .cidrs
        .unwrap_or_default()
        .iter()
        .map(|c| (c, &[][..]))
        .chain(
            pr.cidr_sets
                .unwrap_or_default()
                .iter()
                .filter_map(|s: &CidrRule| s.cidr.as_ref().map(|c| (c, s.except.as_slice()))),
        );
    for (cidr, except) in sets {
        if cidr.as_v4().is_none() {
            continue;
        }
        if cidr.len == 0 {
            ids.insert(identity::WORLD);
        }
        for (prefix, id) in &u.cidrs {
            if cidr.contains_prefix(prefix) && !except.iter().any(|e| e.contains_prefix(prefix)) {
                ids.insert(*id);
            }
        }
        // A DNS answer's /32 is the longest prefix for its address, so a
        // CIDR rule covering the address must select it too.
        for (addr, id, _) in &u.fqdns {
            if cidr.contains_v4(*addr) && !except.iter().any(|e| e.contains_v4(*addr)) {
                ids.insert(*id);
            }
        }
    }
    for sel in pr.fqdns.unwrap_or_default() {
        let (name, pattern) = (sel.match_name.as_deref(), sel.match_pattern.as_deref());
        ids.extend(
            u.fqdns
                .iter()
                .filter(|(_, _, names)| names.iter().any(|n| fqdn_matches(name, pattern, n)))
                .map(|(_, id, _)| *id),
        );
    }
    Peers::Ids(ids)
}

fn collect_cidrs(set: &PolicySet) -> Vec<(Cidr, u32)> {
    let mut prefixes = BTreeSet::new();
    for p in &set.policies {
        for rule in p.policy.rules() {
            let peers = rule
                .ingress
                .iter()
                .chain(&rule.ingress_deny)
                .flatten()
                .map(|r| r.as_peer_rule());
            let peers = peers.chain(
                rule.egress
                    .iter()
                    .chain(&rule.egress_deny)
                    .flatten()
                    .map(|r| r.as_peer_rule()),
            );
            for pr in peers {
                prefixes.extend(pr.cidrs.unwrap_or_default().iter().copied());
                for s in pr.cidr_sets.unwrap_or_default() {
                    prefixes.extend(s.cidr.iter().copied());
                    prefixes.extend(s.except.iter().copied());
                }
            }
        }
    }
    prefixes
        .into_iter()
        .filter(|c| c.as_v4().is_some() && c.len > 0)
        .zip(CIDR_IDENTITY_BASE..)
        .collect()
}
