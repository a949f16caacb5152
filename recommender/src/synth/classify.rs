//! What current policy already does with an observed flow, and so which
//! sides of it a proposal must allow (or why it must not).

use cnpilot_learner::aggregate::FlowSummary;
use serde::Serialize;

use super::universe::PeerRef;
use super::{requests_of, Dir, FlowRef, Options};
use crate::compile::{CompiledPolicy, Outcome, Side};

/// Why an observed flow is not allowed by the proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Disposition {
    /// Seen fewer times than `--min-count`.
    BelowMinCount { min_count: u64 },
    /// Current policy denies it on both sides (default deny on each): kept
    /// denied unless `--allow-denied`.
    KeptDenied { rules: Vec<String> },
    /// An explicit deny rule of the current policies matches it.
    DeniedByRule { rule: String },
    /// A current HTTP rule set does not allow this request.
    L7DeniedByCurrent { rule: String },
    /// Its subjects are outside `--namespace`.
    OutOfScope,
    /// A construct the recommender cannot express yet.
    Unsupported { what: String },
}

impl Disposition {
    /// One line for the terminal review.
    pub fn describe(&self) -> String {
        match self {
            Disposition::BelowMinCount { min_count } => {
                format!("seen fewer than --min-count {min_count} times")
            }
            Disposition::KeptDenied { rules } => {
                format!(
                    "denied on both sides by current policy ({})",
                    rules.join("; ")
                )
            }
            Disposition::DeniedByRule { rule } => format!("explicit deny rule {rule}"),
            Disposition::L7DeniedByCurrent { rule } => {
                format!("no current HTTP rule allows this request ({rule})")
            }
            Disposition::OutOfScope => "outside --namespace".to_string(),
            Disposition::Unsupported { what } => format!("not supported: {what}"),
        }
    }
}

/// An observed flow the proposal leaves denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exclusion {
    pub flow: FlowRef,
    pub disposition: Disposition,
}

fn rule_name(compiled: &CompiledPolicy, side: &Side) -> String {
    side.rule
        .and_then(|id| compiled.rule(id))
        .map_or_else(|| "default deny".to_string(), ToString::to_string)
}

fn explicitly_allowed(side: &Side) -> bool {
    matches!(side.outcome, Outcome::Allowed | Outcome::L7Allowed)
}

/// The sides a proposal must allow for `row` (empty: current policy
/// already allows both explicitly), or why the flow stays denied.
pub(crate) fn classify(
    row: &FlowSummary,
    src: &PeerRef,
    dst: &PeerRef,
    current: &CompiledPolicy,
    has_current: bool,
    options: &Options,
) -> Result<Vec<Dir>, Disposition> {
    let requests = requests_of(row);
    let decide = |http| crate::proof::sides(current, src, dst, row.proto, row.dst_port, http);
    let decisions: Vec<(Side, Side)> = if requests.is_empty() {
        vec![decide(None)]
    } else {
        requests.iter().map(|r| decide(Some(r))).collect()
    };
    for (egress, ingress) in &decisions {
        for side in [egress, ingress] {
            if side.outcome == Outcome::DenyRule {
                return Err(Disposition::DeniedByRule {
                    rule: rule_name(current, side),
                });
            }
        }
        for side in [egress, ingress] {
            if side.outcome == Outcome::L7Denied {
                return Err(Disposition::L7DeniedByCurrent {
                    rule: rule_name(current, side),
                });
            }
        }
    }
    let (egress, ingress) = decisions[0];
    // DNS to whatever answered on port 53 is what every workload needs
    // before anything else works: always proposed.
    let dns = row.dst_port == 53 && matches!(dst, PeerRef::Workload(_));
    if has_current
        && !options.allow_denied
        && !dns
        && egress.outcome == Outcome::DefaultDeny
        && ingress.outcome == Outcome::DefaultDeny
    {
        let mut rules = vec![
            format!("egress: {}", rule_name(current, &egress)),
            format!("ingress: {}", rule_name(current, &ingress)),
        ];
        rules.dedup();
        return Err(Disposition::KeptDenied { rules });
    }
    let mut needs = Vec::new();
    // A side with no policy at all (NoPolicy) still needs a rule: the
    // proposal puts the subject into default deny in that direction.
    if src.is_subject() && !explicitly_allowed(&egress) {
        needs.push(Dir::Egress);
    }
    if dst.is_subject() && !explicitly_allowed(&ingress) {
        needs.push(Dir::Ingress);
    }
    Ok(needs)
}
