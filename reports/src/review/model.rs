//! What a review says, independent of how it is rendered: every renderer
//! (terminal, Markdown, HTML) prints these values and decides nothing.

use serde::Serialize;

/// How much a risk matters to a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Stops the pipeline (exit 1).
    Blocker,
    /// Worth a reviewer's look.
    Warning,
    /// Context.
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RiskKind {
    /// The subject selector matches more workloads than the subject.
    BlastRadius,
    /// Egress to `world` (toEntities world/all, toCIDR, toCIDRSet).
    WorldEgress,
    /// A rule learned from fewer than [`FEW_CONNECTIONS`] connections.
    FewFlows,
    /// HTTP rules that a plain L3/L4 allow on the same peer and port
    /// makes ineffective (the plain allow wins).
    ShadowedL7,
    /// No flow of the store is decided by this rule.
    NeverHit,
}

impl RiskKind {
    pub fn label(self) -> &'static str {
        match self {
            RiskKind::BlastRadius => "blast radius",
            RiskKind::WorldEgress => "world egress",
            RiskKind::FewFlows => "few flows",
            RiskKind::ShadowedL7 => "shadowed L7",
            RiskKind::NeverHit => "never hit",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            RiskKind::ShadowedL7 => Severity::Blocker,
            RiskKind::BlastRadius | RiskKind::WorldEgress | RiskKind::FewFlows => Severity::Warning,
            RiskKind::NeverHit => Severity::Info,
        }
    }
}

/// Rules from fewer connections than this are flagged.
pub const FEW_CONNECTIONS: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Risk {
    pub kind: RiskKind,
    pub severity: Severity,
    pub message: String,
}

impl Risk {
    pub fn new(kind: RiskKind, message: String) -> Risk {
        Risk {
            kind,
            severity: kind.severity(),
            message,
        }
    }
}

/// Whether an object is new, changed or the same as in `--current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    New,
    Changed,
    Unchanged,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Changed => "changed",
            Status::Unchanged => "unchanged",
        }
    }
}

/// What the store says about one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Flow table rows decided by this rule.
    pub flows: u64,
    pub connections: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleReview {
    /// `spec.egress[1]`.
    pub path: String,
    pub direction: &'static str,
    /// Peers as a reader names them (`app=payments-api in payments`, `world`, `198.19.0.7/32`).
    pub peers: Vec<String>,
    /// `TCP/8080`; empty: every port.
    pub ports: Vec<String>,
    /// `GET /api/v1/charges`.
    pub http: Vec<String>,
    /// The `cnpilot.io/evidence.*` annotation of this rule.
    pub evidence: Option<String>,
    /// Recomputed from `--store`.
    pub observed: Option<Observed>,
    /// No rule with the same content in any current policy.
    pub new: bool,
    /// The empty rule that only keeps a direction in default deny.
    pub default_deny_only: bool,
    pub risks: Vec<Risk>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyReview {
    /// `CiliumNetworkPolicy payments/x`.
    pub object: String,
    pub file: String,
    pub line: usize,
    /// `cnpilot.io/subject`.
    pub subject: Option<String>,
    /// `cnpilot.io/blast-radius`.
    pub blast_radius: Vec<String>,
    /// Every workload of the store the endpoint selector matches.
    pub blast_radius_store: Option<Vec<String>>,
    pub status: Status,
    /// Unified diff against the current object (changed objects only).
    pub diff: Vec<String>,
    pub rules: Vec<RuleReview>,
    /// Risks of the policy as a whole.
    pub risks: Vec<Risk>,
}

impl PolicyReview {
    /// Policy and rule risks.
    pub fn all_risks(&self) -> impl Iterator<Item = &Risk> {
        self.risks
            .iter()
            .chain(self.rules.iter().flat_map(|r| r.risks.iter()))
    }
}

/// One observed flow in a list (newly denied, newly allowed, excluded, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowLine {
    pub flow: String,
    pub connections: Option<u64>,
    pub detail: String,
}

/// A problem of the current policies on their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `egress of tenant-a/worker toward monitoring/prometheus TCP/9090`.
    pub what: String,
    /// The rule that allows one side.
    pub allowed_by: String,
    /// Why the other side denies it.
    pub denied_by: String,
    pub fix: String,
    /// Connections of the store this denied (0 without a store, or never seen).
    pub observed_connections: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub flows: usize,
    pub connections: u64,
    pub allowed_flows: usize,
    pub allowed_connections: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProbeSummary {
    pub total: usize,
    pub denied: usize,
    pub allowed_by_proposal: Vec<FlowLine>,
    pub allowed_otherwise: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub policies: usize,
    pub new_policies: usize,
    pub changed_policies: usize,
    pub rules: usize,
    pub risks: usize,
    pub blockers: usize,
    /// Why the review fails a pipeline; empty: it passes.
    pub stop_reasons: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Review {
    pub proposed: Vec<String>,
    pub current: Vec<String>,
    pub stores: Vec<String>,
    pub summary: Summary,
    pub policies: Vec<PolicyReview>,
    /// Current objects the proposal does not contain (kept as they are).
    pub current_only: Vec<String>,
    /// From replay: allowed by current policy, denied with the proposal.
    pub newly_denied: Vec<FlowLine>,
    /// From replay: denied by current policy, allowed with the proposal.
    pub newly_allowed: Vec<FlowLine>,
    /// From replay: denied and not listed by the recommendation.
    pub unexpected_denials: Vec<FlowLine>,
    pub replay: Option<ReplaySummary>,
    pub probes: Option<ProbeSummary>,
    /// Observed flows the proposal keeps denied, with the reason.
    pub excluded: Vec<FlowLine>,
    /// Where `excluded` comes from; `None`: not available.
    pub excluded_source: Option<String>,
    pub current_findings: Vec<Finding>,
    pub notes: Vec<String>,
}

impl Review {
    /// Whether a pipeline should stop on this review.
    pub fn should_stop(&self) -> bool {
        !self.summary.stop_reasons.is_empty()
    }
}
