//! Proofs that a proposal is right, run on the evaluator (the same
//! compiled entries the datapath loads):
//! - [`replay`]: every observed flow through current + proposed policies:
//!   allowed, or denied for a reason the recommendation listed;
//! - [`probes`]: flows never observed (other peers, ports, methods, paths,
//!   addresses) must all be denied, unless current policy already allowed
//!   them.

pub mod probes;
pub mod replay;

use std::collections::BTreeSet;

use cnpilot_bpf::maps::Direction;

use crate::compile::{combine, CompiledPolicy, HttpRequest, Outcome, Side, Verdict};
use crate::model::PolicySet;
use crate::synth::universe::{peer_identity, PeerRef, Universe};

/// Current and proposed policies compiled alone and together.
pub struct Evaluators {
    pub current: CompiledPolicy,
    pub combined: CompiledPolicy,
    proposed_files: BTreeSet<String>,
    has_current: bool,
}

impl Evaluators {
    /// Host policies are compiled for the universe's node
    /// ([`Universe::node_input`]), so that a flow of the host is decided
    /// by them as the host firewall would.
    pub fn new(universe: &Universe, current: &PolicySet, proposed: &PolicySet) -> Evaluators {
        let ids = universe.identity_inputs();
        let node = universe.node_input();
        let mut both = current.clone();
        both.extend(proposed.clone());
        Evaluators {
            current: CompiledPolicy::compile_with_fqdns(
                current,
                &ids,
                Some(&node),
                &universe.fqdns,
            ),
            combined: CompiledPolicy::compile_with_fqdns(&both, &ids, Some(&node), &universe.fqdns),
            proposed_files: proposed.policies.iter().map(|p| p.file.clone()).collect(),
            has_current: !current.policies.is_empty(),
        }
    }

    /// Whether a compiled rule id of the combined policy comes from a
    /// proposed file.
    pub fn is_proposed(&self, rule: Option<u32>) -> bool {
        rule.and_then(|id| self.combined.rule(id))
            .is_some_and(|r| self.proposed_files.contains(&r.file))
    }

    pub fn has_current(&self) -> bool {
        self.has_current
    }

    /// The rule behind a side, as text (`CiliumNetworkPolicy ns/name spec.ingress[0] (file:line)`).
    pub fn describe(&self, compiled: &CompiledPolicy, side: &Side) -> String {
        let what = match side.outcome {
            Outcome::NotEnforced => return "not enforced".into(),
            Outcome::NoPolicy => return "no policy selects it".into(),
            Outcome::Allowed => "allowed by",
            Outcome::L7Allowed => "HTTP allowed by",
            Outcome::L7Denied => "HTTP request matches no rule of",
            Outcome::DenyRule => "denied by",
            Outcome::DefaultDeny => "default deny of",
        };
        let rule = side
            .rule
            .and_then(|id| compiled.rule(id))
            .map_or_else(|| "?".to_string(), ToString::to_string);
        format!("{what} {rule}")
    }
}

/// The source's egress and the destination's ingress for one flow (one
/// request of it for an HTTP flow); a side that is neither a workload nor
/// the host ([`PeerRef::is_subject`]) is not enforced here.
pub fn sides(
    compiled: &CompiledPolicy,
    src: &PeerRef,
    dst: &PeerRef,
    proto: u8,
    port: u16,
    http: Option<&HttpRequest>,
) -> (Side, Side) {
    let s = peer_identity(src, compiled);
    let d = peer_identity(dst, compiled);
    let not_enforced = Side {
        outcome: Outcome::NotEnforced,
        rule: None,
    };
    let egress = if src.is_subject() {
        compiled.check(Direction::Egress, s, d, proto, port, http)
    } else {
        not_enforced
    };
    let ingress = if dst.is_subject() {
        compiled.check(Direction::Ingress, d, s, proto, port, http)
    } else {
        not_enforced
    };
    (egress, ingress)
}

/// Both sides of a flow in one compiled policy and the verdict; an L7
/// flow's requests are each decided, the first denied one wins.
pub fn decide(
    compiled: &CompiledPolicy,
    src: &PeerRef,
    dst: &PeerRef,
    proto: u8,
    port: u16,
    requests: &[HttpRequest],
) -> (Verdict, Side, Side) {
    let one = |http: Option<&HttpRequest>| {
        let (egress, ingress) = sides(compiled, src, dst, proto, port, http);
        (combine(egress.outcome, ingress.outcome), egress, ingress)
    };
    if requests.is_empty() {
        return one(None);
    }
    let mut first = None;
    for r in requests {
        let d = one(Some(r));
        if d.0 != Verdict::Allow {
            return d;
        }
        first.get_or_insert(d);
    }
    first.unwrap_or_else(|| one(None))
}

/// The sides that denied, as text.
pub fn denial_reason(
    ev: &Evaluators,
    compiled: &CompiledPolicy,
    egress: &Side,
    ingress: &Side,
) -> String {
    let denied = |s: &Side| {
        matches!(
            s.outcome,
            Outcome::DenyRule | Outcome::DefaultDeny | Outcome::L7Denied
        )
    };
    let mut parts = Vec::new();
    if denied(egress) {
        parts.push(format!("egress: {}", ev.describe(compiled, egress)));
    }
    if denied(ingress) {
        parts.push(format!("ingress: {}", ev.describe(compiled, ingress)));
    }
    parts.join("; ")
}
