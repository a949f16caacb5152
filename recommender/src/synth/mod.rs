//! Synthesis: from the learned flow table to the smallest
//! CiliumNetworkPolicies that allow what was observed and nothing else.
//!
//! Every flow needs two sides: the source's egress and the destination's
//! ingress. Each workload gets one CNP holding both directions; a workload
//! is put in default deny in both directions (see [`emit`] for how that is
//! spelled so that every Cilium version reads it the same way). The node's
//! own host (identity 1, flows of the host firewall) is a subject too: its
//! sides become one host policy ([`host`]). With current policies, a side
//! they already allow with an explicit rule needs nothing new, and what
//! they deny on purpose stays denied ([`classify`]).

mod cidr;
mod classify;
pub mod emit;
pub mod fqdn;
pub mod host;
pub mod l7;
pub mod selector;
pub mod universe;

use std::collections::BTreeMap;

use cnpilot_learner::aggregate::{FlowSummary, FlowTable};
pub use cnpilot_learner::record::proto_name;
use serde::Serialize;

pub use classify::{Disposition, Exclusion};
pub use emit::{Proposed, RuleEvidence};
pub use l7::L7Mode;
pub use universe::{PeerRef, Universe, Workload, HOST};

use crate::compile::{CompiledPolicy, HttpRequest};
use crate::model::PolicySet;

/// The knobs of `cnpilot recommend`.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub l7: L7Mode,
    /// Flows (rows) with fewer connections / requests become listed
    /// exceptions instead of rules.
    pub min_count: u64,
    /// Aggregate world addresses to prefixes of this length.
    pub cidr_prefix: Option<u8>,
    /// Only propose policies for subjects in these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// Also allow flows that current policies deny on both sides.
    pub allow_denied: bool,
}

/// One flow of the table, as the review names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlowRef {
    pub src: String,
    pub dst: String,
    /// `TCP/8080`.
    pub port: String,
    /// `GET /api/v1/charges` for an HTTP row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    pub connections: u64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
}

/// The result of [`recommend`].
#[derive(Debug, Clone, Default)]
pub struct Recommendation {
    pub policies: Vec<Proposed>,
    /// Observed flows the proposal does not allow, each with the reason.
    pub excluded: Vec<Exclusion>,
    /// Flows whose needed sides current policy already allows.
    pub already_allowed: usize,
    pub warnings: Vec<String>,
}

impl FlowRef {
    pub fn of(row: &FlowSummary, universe: &Universe) -> FlowRef {
        FlowRef {
            src: universe.name_of(&universe.source(row)),
            dst: universe.name_of(&universe.destination(row)),
            port: format!("{}/{}", proto_name(row.proto), row.dst_port),
            http: http_of(row).map(|(m, p)| format!("{m} {p}")),
            connections: row.connections,
            first_seen_ns: row.first_seen_ns,
            last_seen_ns: row.last_seen_ns,
        }
    }
}

impl std::fmt::Display for FlowRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.src, self.dst, self.port)?;
        if let Some(h) = &self.http {
            write!(f, " {h}")?;
        }
        Ok(())
    }
}

/// An HTTP row's method and template.
pub fn http_of(row: &FlowSummary) -> Option<(&str, &str)> {
    if row.l7_protocol.as_deref() != Some("http") {
        return None;
    }
    Some((
        row.l7_method.as_deref().unwrap_or("GET"),
        row.path_template.as_deref().unwrap_or("/"),
    ))
}

/// The requests a row stands for, for the evaluator: one per distinct raw
/// path kept as evidence (the template itself when none was kept).
pub fn requests_of(row: &FlowSummary) -> Vec<HttpRequest> {
    let Some((method, template)) = http_of(row) else {
        return Vec::new();
    };
    let paths: Vec<&str> = if row.paths.is_empty() {
        vec![template]
    } else {
        row.paths.iter().map(String::as_str).collect()
    };
    let mut out: Vec<HttpRequest> = paths
        .into_iter()
        .map(|p| HttpRequest {
            method: method.to_string(),
            path: p.to_string(),
            ..HttpRequest::default()
        })
        .collect();
    // The table keeps whether queries were seen, not their text: one
    // request with a query stands for them.
    if row.with_query > 0 {
        let with: Vec<HttpRequest> = out
            .iter()
            .map(|r| HttpRequest {
                path: format!("{}?q=1", r.path),
                ..r.clone()
            })
            .collect();
        out.extend(with);
    }
    out
}

/// What one side (a subject in one direction) must allow, per peer and
/// port: the evidence accumulates as rows are added.
#[derive(Debug, Clone, Default)]
pub(crate) struct PortEvidence {
    pub connections: u64,
    pub rows: u64,
    pub first_seen_ns: i64,
    pub last_seen_ns: i64,
    pub example: Option<FlowRef>,
    pub requests: l7::Requests,
    /// Seen as plain connections without any HTTP record.
    pub plain: bool,
}

impl PortEvidence {
    fn add(&mut self, row: &FlowSummary, flow: &FlowRef) {
        if self.rows == 0 {
            self.first_seen_ns = row.first_seen_ns;
            self.last_seen_ns = row.last_seen_ns;
        }
        self.rows += 1;
        self.connections += row.connections;
        self.first_seen_ns = self.first_seen_ns.min(row.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(row.last_seen_ns);
        let better = match &self.example {
            None => true,
            Some(e) => e.http.is_none() && flow.http.is_some(),
        };
        if better {
            self.example = Some(flow.clone());
        }
        match http_of(row) {
            Some((method, template)) => l7::observe(
                &mut self.requests,
                method,
                template,
                &row.paths,
                row.with_query > 0,
            ),
            None => self.plain = true,
        }
    }

    /// Adds another peer's or address's evidence (peers grouped into one
    /// rule, addresses merged into one prefix).
    pub(crate) fn merge(&mut self, from: PortEvidence) {
        if self.rows == 0 {
            *self = from;
            return;
        }
        self.connections += from.connections;
        self.rows += from.rows;
        self.first_seen_ns = self.first_seen_ns.min(from.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(from.last_seen_ns);
        self.plain |= from.plain;
        if self.example.is_none() {
            self.example = from.example;
        }
        for (method, templates) in from.requests {
            let t = self.requests.entry(method).or_default();
            for (template, m) in templates {
                let slot = t.entry(template).or_default();
                slot.paths.extend(m.paths);
                slot.with_query |= m.with_query;
            }
        }
    }
}

/// Direction of a side, from the subject's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dir {
    Ingress,
    Egress,
}

/// Whose policy a side goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Subject {
    /// A workload identity: its CNP.
    Workload(u32),
    /// The host of the nodes: the host policy.
    Host,
}

pub(crate) type Sides =
    BTreeMap<(Subject, Dir), BTreeMap<PeerRef, BTreeMap<(u8, u16), PortEvidence>>>;

/// Recommend policies for `table`, on top of `current` (empty for a
/// cluster with no policies yet).
pub fn recommend(table: &FlowTable, current: &PolicySet, options: &Options) -> Recommendation {
    let universe = Universe::from_table(table);
    // With the recording's DNS answers: a current toFQDNs rule already
    // allows what it allowed when the flows were seen.
    let compiled_current = CompiledPolicy::compile_with_fqdns(
        current,
        &universe.identity_inputs(),
        Some(&universe.node_input()),
        &universe.fqdns,
    );
    let has_current = !current.policies.is_empty();
    let in_scope =
        |ns: &str| options.namespaces.is_empty() || options.namespaces.iter().any(|n| n == ns);

    let mut sides: Sides = BTreeMap::new();
    let mut rec = Recommendation::default();
    let mut icmp_skipped = 0usize;
    for row in &table.rows {
        let flow = FlowRef::of(row, &universe);
        let src = universe.source(row);
        let dst = universe.destination(row);
        if !matches!(row.proto, 6 | 17 | 132) {
            icmp_skipped += 1;
            rec.excluded.push(Exclusion {
                flow,
                disposition: Disposition::Unsupported {
                    what: format!("protocol {} (ICMP rules are not emitted yet)", row.proto),
                },
            });
            continue;
        }
        let needs = classify::classify(row, &src, &dst, &compiled_current, has_current, options);
        let needs = match needs {
            Ok(needs) => needs,
            Err(disposition) => {
                rec.excluded.push(Exclusion { flow, disposition });
                continue;
            }
        };
        if needs.is_empty() {
            rec.already_allowed += 1;
            continue;
        }
        if row.connections < options.min_count {
            rec.excluded.push(Exclusion {
                flow,
                disposition: Disposition::BelowMinCount {
                    min_count: options.min_count,
                },
            });
            continue;
        }
        let mut out_of_scope = true;
        for dir in needs {
            let (subject, peer) = match dir {
                Dir::Egress => (&src, &dst),
                Dir::Ingress => (&dst, &src),
            };
            let key = match subject {
                PeerRef::Workload(id) => match universe.workloads.get(id) {
                    Some(w) if in_scope(&w.namespace) => Subject::Workload(*id),
                    _ => continue,
                },
                // The host is in no namespace: `-n` leaves it out.
                PeerRef::Entity(HOST) if options.namespaces.is_empty() => Subject::Host,
                _ => continue,
            };
            out_of_scope = false;
            sides
                .entry((key, dir))
                .or_default()
                .entry(peer.clone())
                .or_default()
                .entry((row.proto, row.dst_port))
                .or_default()
                .add(row, &flow);
        }
        if out_of_scope {
            rec.excluded.push(Exclusion {
                flow,
                disposition: Disposition::OutOfScope,
            });
        }
    }
    if icmp_skipped > 0 {
        rec.warnings.push(format!(
            "{icmp_skipped} ICMP/other-protocol flow rows were not turned into rules (icmps rules are not emitted yet)"
        ));
    }
    // Addresses reached by name first: only those left are CIDR peers.
    let fqdns = fqdn::take_named(&mut sides, &table.dns);
    cidr::aggregate_cidrs(&mut sides, options.cidr_prefix);
    rec.policies = emit::policies(&sides, &fqdns, &universe, options, &mut rec.warnings);
    rec.warnings
        .extend(host::current_selectors_unknown(current));
    rec.warnings
        .extend(beside_current(&mut rec.policies, current));
    rec.excluded.sort_by(|a, b| a.flow.cmp(&b.flow));
    rec
}

/// A proposed policy named like a current one would *replace* it when
/// applied (same kind, namespace and name: one object), dropping every
/// rule the current one holds. Recommending again on top of an earlier
/// proposal (or of the addition a rollback proposes) is the normal loop, so
/// a clash gets the first free `-2`, `-3`… name: the proposal then stands
/// beside the current policy, and Cilium allows the union of both.
fn beside_current(policies: &mut [emit::Proposed], current: &PolicySet) -> Vec<String> {
    use crate::model::{CiliumPolicy, PolicyKind};
    use std::collections::BTreeSet;
    type Key = (PolicyKind, String, String);
    let key = |p: &CiliumPolicy| -> Key {
        (
            p.kind,
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone(),
        )
    };
    let existing: BTreeSet<Key> = current.policies.iter().map(|p| key(&p.policy)).collect();
    let mut taken = existing.clone();
    taken.extend(policies.iter().map(|p| key(&p.policy)));
    let mut warnings = Vec::new();
    for p in policies.iter_mut() {
        let (kind, ns, name) = key(&p.policy);
        if !existing.contains(&(kind, ns.clone(), name.clone())) {
            continue;
        }
        let Some(free) = (2u32..)
            .map(|n| format!("{name}-{n}"))
            .find(|candidate| !taken.contains(&(kind, ns.clone(), candidate.clone())))
        else {
            continue;
        };
        taken.insert((kind, ns.clone(), free.clone()));
        let (old, new, file) = if kind == PolicyKind::CiliumNetworkPolicy {
            (
                format!("{ns}/{name}"),
                format!("{ns}/{free}"),
                format!("{ns}-{free}.yaml"),
            )
        } else {
            (name.clone(), free.clone(), format!("{free}.yaml"))
        };
        warnings.push(format!(
            "{old} is a current policy: the proposal for {} is named {new} so that \
             applying it adds to {name} instead of replacing it",
            p.subject
        ));
        p.policy.metadata.name = free;
        p.file_name = file;
    }
    warnings
}
