//! Replay: every observed flow through current + proposed policies.

use cnpilot_learner::aggregate::FlowTable;
use serde::Serialize;

use super::{decide, denial_reason, Evaluators};
use crate::compile::Verdict;
use crate::synth::universe::Universe;
use crate::synth::{requests_of, Disposition, Exclusion, FlowRef};

/// One replayed flow that does not pass.
#[derive(Debug, Clone, Serialize)]
pub struct Denied {
    pub flow: FlowRef,
    pub verdict: Verdict,
    /// The deciding rules.
    pub reason: String,
    /// The reason the recommendation gave for leaving it out, if it did.
    pub expected: Option<Disposition>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Distinct flows (table rows) replayed, and the connections and
    /// requests they stand for.
    pub flows: usize,
    pub connections: u64,
    pub allowed_flows: usize,
    pub allowed_connections: u64,
    /// Denied flows with their reasons (expected ones included).
    pub denied: Vec<Denied>,
    /// Denied flows the recommendation did not list: must be 0.
    pub unexpected: usize,
    /// Allowed by current policy alone, denied with the proposal added.
    pub newly_denied: Vec<FlowRef>,
    /// Denied by current policy alone, allowed with the proposal added.
    pub newly_allowed: Vec<FlowRef>,
}

impl ReplayReport {
    /// Allowed share of observed connections, in percent.
    pub fn allowed_percent(&self) -> f64 {
        if self.connections == 0 {
            100.0
        } else {
            self.allowed_connections as f64 * 100.0 / self.connections as f64
        }
    }
}

/// Replay every row of `table`. `excluded` are the flows the
/// recommendation chose not to allow (they count as expected denials).
pub fn replay(
    table: &FlowTable,
    universe: &Universe,
    ev: &Evaluators,
    excluded: &[Exclusion],
) -> ReplayReport {
    let mut report = ReplayReport::default();
    for row in &table.rows {
        let flow = FlowRef::of(row, universe);
        let src = universe.source(row);
        let dst = universe.destination(row);
        let requests = requests_of(row);
        report.flows += 1;
        report.connections += row.connections;
        let (verdict, egress, ingress) =
            decide(&ev.combined, &src, &dst, row.proto, row.dst_port, &requests);
        let (before, _, _) = decide(&ev.current, &src, &dst, row.proto, row.dst_port, &requests);
        if verdict == Verdict::Allow {
            report.allowed_flows += 1;
            report.allowed_connections += row.connections;
            if before != Verdict::Allow && ev.has_current() {
                report.newly_allowed.push(flow);
            }
            continue;
        }
        if before == Verdict::Allow {
            report.newly_denied.push(flow.clone());
        }
        let expected = excluded
            .iter()
            .find(|e| e.flow == flow)
            .map(|e| e.disposition.clone());
        if expected.is_none() {
            report.unexpected += 1;
        }
        report.denied.push(Denied {
            reason: denial_reason(ev, &ev.combined, &egress, &ingress),
            flow,
            verdict,
            expected,
        });
    }
    report
}
