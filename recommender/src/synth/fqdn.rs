//! World addresses a workload reached by name: `toFQDNs` instead of
//! `toCIDR`.
//!
//! The rule: a workload's egress to a world address X on a port becomes
//! `toFQDNs: [{matchName: N}]` (with that port) when the same workload
//! (source identity) was given X in a DNS answer for N *before* the first
//! connection to X on that port, and that first connection came no later
//! than the TTL (plus [`CLOCK_SLACK_NS`]) after the last such answer.
//! That is what Cilium's DNS proxy enforces: it allows X for N from the
//! moment it sees the answer until the TTL runs out (`--tofqdns-min-ttl` is
//! 0 by default since Cilium 1.16, so the upstream TTL is honoured). The
//! flow table keeps, per (workload, name, address), only the first and
//! last answer, so a connection between two answers is taken as covered by
//! one of them. An address seen before any answer for it, or never
//! answered, stays a `toCIDR` peer ([`super::cidr`]), as does every IPv6
//! address (the evaluator's FQDN identities are IPv4) and the host's
//! egress (host policies get no `toFQDNs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use cnpilot_learner::aggregate::DnsAnswerSummary;

use super::emit::{port_rules, L7Policy, RuleEvidence};
use super::universe::PeerRef;
use super::{proto_name, Dir, PortEvidence, Sides, Subject};
use crate::model::{EgressRule, FqdnSelector, PortRule};

/// Clock difference tolerated between an answer and the connection after
/// it: the DNS record and the flow may come from different observers
/// (Hubble on two nodes, the agent's proxy and its datapath).
pub const CLOCK_SLACK_NS: i64 = 5_000_000_000;

/// One name's ports, and the addresses behind them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Named {
    pub ports: BTreeMap<(u8, u16), PortEvidence>,
    /// The world addresses reached through this name.
    pub addresses: BTreeSet<Ipv4Addr>,
}

/// A subject's egress by DNS name.
pub(crate) type ByName = BTreeMap<String, Named>;

/// Every subject's egress by DNS name.
pub(crate) type Fqdns = BTreeMap<Subject, ByName>;

/// Whether `answer` accounts for a connection first seen at `first_seen_ns`
/// (see the module documentation).
fn covers(answer: &DnsAnswerSummary, first_seen_ns: i64) -> bool {
    let ttl_ns = i64::from(answer.ttl).saturating_mul(1_000_000_000);
    let until = answer
        .last_answered_ns
        .saturating_add(ttl_ns)
        .saturating_add(CLOCK_SLACK_NS);
    answer.first_answered_ns <= first_seen_ns && first_seen_ns <= until
}

/// The single IPv4 address a peer stands for, if it is one.
fn host_v4(peer: &PeerRef) -> Option<Ipv4Addr> {
    match peer {
        PeerRef::Cidr(c) => match (c.addr, c.len) {
            (IpAddr::V4(addr), 32) => Some(addr),
            _ => None,
        },
        _ => None,
    }
}

/// Moves every workload's egress to a world address that was reached by
/// name out of `sides` (where it would become `toCIDR`) into the result.
/// Run before [`super::cidr::aggregate_cidrs`], which then merges only the
/// addresses left.
pub(crate) fn take_named(sides: &mut Sides, answers: &[DnsAnswerSummary]) -> Fqdns {
    let mut by_address: BTreeMap<(u32, Ipv4Addr), Vec<&DnsAnswerSummary>> = BTreeMap::new();
    for a in answers {
        if let IpAddr::V4(ip) = a.ip {
            by_address.entry((a.src_identity, ip)).or_default().push(a);
        }
    }
    let mut out = Fqdns::new();
    if by_address.is_empty() {
        return out;
    }
    for ((subject, dir), peers) in sides.iter_mut() {
        let (Subject::Workload(id), Dir::Egress) = (*subject, *dir) else {
            continue;
        };
        let addresses: Vec<(PeerRef, Ipv4Addr)> = peers
            .keys()
            .filter_map(|p| host_v4(p).map(|ip| (p.clone(), ip)))
            .collect();
        for (peer, ip) in addresses {
            let Some(candidates) = by_address.get(&(id, ip)) else {
                continue;
            };
            let Some(ports) = peers.get_mut(&peer) else {
                continue;
            };
            let named: Vec<((u8, u16), Vec<&str>)> = ports
                .iter()
                .map(|(port, ev)| {
                    let names = candidates
                        .iter()
                        .filter(|a| covers(a, ev.first_seen_ns))
                        .map(|a| a.name.as_str())
                        .collect();
                    (*port, names)
                })
                .filter(|(_, names): &(_, Vec<&str>)| !names.is_empty())
                .collect();
            for (port, names) in named {
                let Some(ev) = ports.remove(&port) else {
                    continue;
                };
                for name in names {
                    let slot = out
                        .entry(*subject)
                        .or_default()
                        .entry(name.to_string())
                        .or_default();
                    slot.addresses.insert(ip);
                    slot.ports.entry(port).or_default().merge(ev.clone());
                }
            }
            if ports.is_empty() {
                peers.remove(&peer);
            }
        }
    }
    out
}

/// The `toFQDNs` egress rules of one subject, numbered from `first_index`
/// (`spec.egress[n]`), each with its evidence. Names whose ports come out
/// the same share a rule.
pub(crate) fn egress_rules(
    named: &ByName,
    l7: L7Policy,
    first_index: usize,
) -> Vec<(EgressRule, RuleEvidence)> {
    struct Rule {
        names: Vec<String>,
        addresses: BTreeSet<Ipv4Addr>,
        to_ports: Vec<PortRule>,
        http: Vec<(String, Vec<String>)>,
        evidence: PortEvidence,
        ports: Vec<String>,
    }
    let mut by_ports: BTreeMap<String, Rule> = BTreeMap::new();
    for (name, n) in named {
        // A name is outside the cluster, as `world` is: its port 53 is no
        // DNS server's, and so gets no DNS companion.
        let pp = port_rules(&PeerRef::Entity("world"), &n.ports, Dir::Egress, l7);
        let key = serde_json::to_string(&pp.to_ports).unwrap_or_default();
        let rule = by_ports.entry(key).or_insert_with(|| Rule {
            names: Vec::new(),
            addresses: BTreeSet::new(),
            to_ports: pp.to_ports.clone(),
            http: Vec::new(),
            evidence: PortEvidence::default(),
            ports: n
                .ports
                .keys()
                .map(|&(proto, port)| format!("{}/{port}", proto_name(proto)))
                .collect(),
        });
        rule.names.push(name.clone());
        rule.addresses.extend(&n.addresses);
        for h in pp.http {
            match rule.http.iter_mut().find(|(r, _)| *r == h.0) {
                Some(slot) => {
                    slot.1.extend(h.1);
                    slot.1.sort();
                    slot.1.dedup();
                }
                None => rule.http.push(h),
            }
        }
        for ev in n.ports.values() {
            rule.evidence.merge(ev.clone());
        }
    }
    by_ports
        .into_values()
        .enumerate()
        .map(|(i, r)| {
            let rule = EgressRule {
                to_fqdns: Some(
                    r.names
                        .iter()
                        .map(|n| FqdnSelector {
                            match_name: Some(n.clone()),
                            match_pattern: None,
                        })
                        .collect(),
                ),
                to_ports: (!r.to_ports.is_empty()).then_some(r.to_ports),
                ..EgressRule::default()
            };
            let addresses: Vec<String> = r.addresses.iter().map(Ipv4Addr::to_string).collect();
            let evidence = RuleEvidence {
                path: format!("spec.egress[{}]", first_index + i),
                direction: Dir::Egress,
                // The name, and the answered addresses the flows went to.
                peers: r
                    .names
                    .iter()
                    .map(|n| format!("{n} (DNS answer: {})", addresses.join(", ")))
                    .collect(),
                ports: r.ports,
                http: r.http,
                connections: r.evidence.connections,
                rows: r.evidence.rows,
                first_seen_ns: r.evidence.first_seen_ns,
                last_seen_ns: r.evidence.last_seen_ns,
                // The flow's destination by the name it was reached by.
                example: r
                    .evidence
                    .example
                    .as_ref()
                    .map(|f| {
                        let mut f = f.clone();
                        if let Some(name) = r.names.first() {
                            f.dst = format!("{name} ({})", f.dst.trim_end_matches("/32"));
                        }
                        f.to_string()
                    })
                    .unwrap_or_default(),
                default_deny_only: false,
            };
            (rule, evidence)
        })
        .collect()
}

/// A warning when no egress rule of a subject with `toFQDNs` rules lets
/// Cilium's DNS proxy see its lookups (`toPorts[].rules.dns`): without
/// one, `toFQDNs` never learns an address and allows nothing.
pub(crate) fn visibility_warning(subject: &str, egress: &[EgressRule]) -> Option<String> {
    let visible = egress
        .iter()
        .flat_map(|r| r.to_ports.iter().flatten())
        .any(|p| p.rules.as_ref().is_some_and(|r| r.dns.is_some()));
    (!visible).then(|| {
        format!(
            "{subject}: toFQDNs rules need its DNS lookups to go through Cilium's DNS proxy, \
             but no DNS server in the cluster was seen answering it (an external or \
             node-local resolver?): add an egress rule to it on port 53 with `rules.dns`, \
             or the names' addresses are never allowed"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(first: i64, last: i64, ttl: u32) -> DnsAnswerSummary {
        DnsAnswerSummary {
            src_identity: 1000,
            src_namespace: "web".into(),
            src_workload: "frontend".into(),
            name: "api.github.com".into(),
            ip: IpAddr::V4(Ipv4Addr::new(140, 82, 121, 6)),
            first_answered_ns: first,
            last_answered_ns: last,
            ttl,
            answers: 2,
        }
    }

    #[test]
    fn an_answer_covers_from_itself_to_its_ttl_and_the_slack() {
        const S: i64 = 1_000_000_000;
        let a = answered(100 * S, 200 * S, 30);
        assert!(!covers(&a, 100 * S - 1), "before the first answer");
        assert!(covers(&a, 100 * S), "at the answer");
        assert!(covers(&a, 150 * S), "between two answers");
        assert!(covers(&a, 230 * S + CLOCK_SLACK_NS), "last + TTL + slack");
        assert!(!covers(&a, 230 * S + CLOCK_SLACK_NS + 1), "expired");
        // NXDOMAIN's 2^32-1 TTL or a huge time does not overflow.
        let far = answered(i64::MAX - S, i64::MAX - S, u32::MAX);
        assert!(covers(&far, i64::MAX));
    }
}
