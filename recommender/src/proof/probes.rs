//! Probes: flows that were never observed must be denied. Generated from
//! the table: other peers toward every observed server port, other ports
//! toward observed peers, other methods and paths on HTTP ports, other
//! world addresses and ports, and world toward every server port. A
//! server, a client or an "other peer" is a workload or, when the table
//! has host flows, the host.

use std::collections::{BTreeMap, BTreeSet};

use cnpilot_learner::aggregate::FlowTable;
use serde::Serialize;

use super::{decide, Evaluators};
use crate::compile::{HttpRequest, Outcome, Side, Verdict};
use crate::model::Cidr;
use crate::synth::universe::{PeerRef, Universe, HOST};
use crate::synth::{http_of, proto_name};

/// At most this many probes are generated (a large table would otherwise
/// give a quadratic number of peer pairs).
pub const MAX_PROBES: usize = 20_000;

/// Ports tried toward an observed peer besides the observed ones.
const OTHER_PORTS: &[u16] = &[22, 443, 2379, 5432, 6379, 8443];

/// A world address no lab or cluster uses (TEST-NET-3): probes are
/// evaluated, never sent.
const UNSEEN_WORLD: [u8; 4] = [203, 0, 113, 7];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    OtherPeer,
    OtherPort,
    OtherMethod,
    OtherPath,
    OtherWorldAddress,
    FromWorld,
}

#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub kind: ProbeKind,
    pub flow: String,
    pub verdict: Verdict,
    /// The rules that let it through, when it was allowed.
    pub allowed_by: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeReport {
    pub total: usize,
    pub denied: usize,
    /// Allowed because of a proposed rule: each is a defect of the proposal.
    pub allowed_by_proposal: Vec<Probe>,
    /// Allowed by current policy on its own, or by no policy at all (a
    /// subject outside the proposal).
    pub allowed_otherwise: Vec<Probe>,
    pub by_kind: BTreeMap<ProbeKind, usize>,
}

impl ProbeReport {
    pub fn denied_percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            self.denied as f64 * 100.0 / self.total as f64
        }
    }
}

struct Candidate {
    kind: ProbeKind,
    src: PeerRef,
    dst: PeerRef,
    proto: u8,
    port: u16,
    http: Option<HttpRequest>,
}

fn request(method: &str, path: &str) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        path: path.into(),
        ..HttpRequest::default()
    }
}

fn candidates(table: &FlowTable, universe: &Universe) -> Vec<Candidate> {
    let mut seen: BTreeSet<(PeerRef, PeerRef, u8, u16)> = BTreeSet::new();
    let mut seen_http: BTreeSet<(PeerRef, PeerRef, u16, String, String)> = BTreeSet::new();
    let mut server_ports: BTreeMap<PeerRef, BTreeSet<(u8, u16)>> = BTreeMap::new();
    let mut http_ports: BTreeMap<(PeerRef, PeerRef, u16), Vec<(String, String)>> = BTreeMap::new();
    for row in &table.rows {
        let src = universe.source(row);
        let dst = universe.destination(row);
        seen.insert((src.clone(), dst.clone(), row.proto, row.dst_port));
        if dst.is_subject() {
            server_ports
                .entry(dst.clone())
                .or_default()
                .insert((row.proto, row.dst_port));
        }
        if let Some((method, _)) = http_of(row) {
            for p in &row.paths {
                seen_http.insert((
                    src.clone(),
                    dst.clone(),
                    row.dst_port,
                    method.into(),
                    p.clone(),
                ));
                http_ports
                    .entry((src.clone(), dst.clone(), row.dst_port))
                    .or_default()
                    .push((method.to_string(), p.clone()));
            }
        }
    }
    let mut out = Vec::new();
    let mut clients: Vec<PeerRef> = universe
        .workloads
        .keys()
        .map(|id| PeerRef::Workload(*id))
        .collect();
    if !universe.host_nodes.is_empty() {
        clients.push(PeerRef::Entity(HOST));
    }
    // Other peers toward every server port.
    for (dst, ports) in &server_ports {
        for src in &clients {
            if src == dst {
                continue;
            }
            for &(proto, port) in ports {
                let key = (src.clone(), dst.clone(), proto, port);
                if !seen.contains(&key) {
                    out.push(Candidate {
                        kind: ProbeKind::OtherPeer,
                        src: key.0,
                        dst: key.1,
                        proto,
                        port,
                        http: None,
                    });
                }
            }
        }
        // Once per server, whichever client comes first (an earlier
        // spelling skipped the servers that were also the first client).
        let world = PeerRef::Entity("world");
        for &(proto, port) in ports {
            if !seen.contains(&(world.clone(), dst.clone(), proto, port)) {
                out.push(Candidate {
                    kind: ProbeKind::FromWorld,
                    src: world.clone(),
                    dst: dst.clone(),
                    proto,
                    port,
                    http: None,
                });
            }
        }
    }
    // Other ports, and other world addresses, toward observed peers.
    let mut pairs: BTreeMap<(PeerRef, PeerRef, u8), BTreeSet<u16>> = BTreeMap::new();
    for (s, d, proto, port) in &seen {
        if s.is_subject() {
            pairs
                .entry((s.clone(), d.clone(), *proto))
                .or_default()
                .insert(*port);
        }
    }
    for ((src, dst, proto), ports) in &pairs {
        let max = ports.iter().max().copied().unwrap_or(0);
        let mut others: BTreeSet<u16> = OTHER_PORTS.iter().copied().collect();
        others.insert(max.saturating_add(1));
        for port in others.difference(ports) {
            out.push(Candidate {
                kind: ProbeKind::OtherPort,
                src: src.clone(),
                dst: dst.clone(),
                proto: *proto,
                port: *port,
                http: None,
            });
        }
        if let PeerRef::Cidr(_) = dst {
            for port in ports {
                out.push(Candidate {
                    kind: ProbeKind::OtherWorldAddress,
                    src: src.clone(),
                    dst: PeerRef::Cidr(Cidr::v4(UNSEEN_WORLD.into(), 32)),
                    proto: *proto,
                    port: *port,
                    http: None,
                });
            }
        }
    }
    // Other methods and paths on HTTP ports.
    for ((src, dst, port), requests) in &http_ports {
        let methods: BTreeSet<&str> = requests.iter().map(|(m, _)| m.as_str()).collect();
        for (method, path) in requests {
            for other in ["DELETE", "PUT", "PATCH"] {
                if !methods.contains(other)
                    && !seen_http.contains(&(
                        src.clone(),
                        dst.clone(),
                        *port,
                        other.into(),
                        path.clone(),
                    ))
                {
                    out.push(Candidate {
                        kind: ProbeKind::OtherMethod,
                        src: src.clone(),
                        dst: dst.clone(),
                        proto: 6,
                        port: *port,
                        http: Some(request(other, path)),
                    });
                    break;
                }
            }
            for other_path in [
                format!("{path}/admin"),
                "/admin".to_string(),
                format!("{path}x"),
            ] {
                if !seen_http.contains(&(
                    src.clone(),
                    dst.clone(),
                    *port,
                    method.clone(),
                    other_path.clone(),
                )) {
                    out.push(Candidate {
                        kind: ProbeKind::OtherPath,
                        src: src.clone(),
                        dst: dst.clone(),
                        proto: 6,
                        port: *port,
                        http: Some(request(method, &other_path)),
                    });
                }
            }
        }
    }
    out.truncate(MAX_PROBES);
    out
}

fn explicitly_allowed(s: &Side) -> bool {
    matches!(s.outcome, Outcome::Allowed | Outcome::L7Allowed)
}

/// Generate and evaluate the probes.
pub fn probes(table: &FlowTable, universe: &Universe, ev: &Evaluators) -> ProbeReport {
    let mut report = ProbeReport::default();
    for c in candidates(table, universe) {
        let requests: Vec<HttpRequest> = c.http.iter().cloned().collect();
        let (verdict, egress, ingress) =
            decide(&ev.combined, &c.src, &c.dst, c.proto, c.port, &requests);
        report.total += 1;
        *report.by_kind.entry(c.kind).or_default() += 1;
        if verdict != Verdict::Allow {
            report.denied += 1;
            continue;
        }
        let (_, cur_egress, cur_ingress) =
            decide(&ev.current, &c.src, &c.dst, c.proto, c.port, &requests);
        let by_proposal = (ev.is_proposed(egress.rule)
            && explicitly_allowed(&egress)
            && !explicitly_allowed(&cur_egress))
            || (ev.is_proposed(ingress.rule)
                && explicitly_allowed(&ingress)
                && !explicitly_allowed(&cur_ingress));
        let mut flow = format!(
            "{} -> {} {}/{}",
            universe.name_of(&c.src),
            universe.name_of(&c.dst),
            proto_name(c.proto),
            c.port
        );
        if let Some(h) = &c.http {
            flow.push_str(&format!(" {} {}", h.method, h.path));
        }
        let probe = Probe {
            kind: c.kind,
            flow,
            verdict,
            allowed_by: format!(
                "egress: {}; ingress: {}",
                ev.describe(&ev.combined, &egress),
                ev.describe(&ev.combined, &ingress)
            ),
        };
        if by_proposal {
            report.allowed_by_proposal.push(probe);
        } else {
            report.allowed_otherwise.push(probe);
        }
    }
    report
}
