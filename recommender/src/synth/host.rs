//! The host policy: what the nodes' own host (identity 1, `reserved:host`,
//! recorded by the host firewall) was seen doing becomes one
//! CiliumClusterwideNetworkPolicy, built like a workload's CNP (same peer
//! groups, CIDR aggregation, ports, evidence, default deny both ways).
//!
//! How Cilium reads a host policy (Documentation/security/policy/host.rst,
//! Documentation/security/host-firewall.rst, pkg/policy/api/rule.go and
//! rule_validation.go):
//! - It is a CCNP with a `nodeSelector` instead of an `endpointSelector`;
//!   `Rule.Sanitize` rejects a rule with both. It applies to the host
//!   namespace of every node it selects, hostNetwork pods included.
//! - It takes no L7 rules: `Sanitize` refuses any on a `nodeSelector` rule
//!   ("host policies do not support L7 rules yet", DNS included). Recent
//!   Cilium accepts `rules.dns` there as a beta that sends every DNS query
//!   of the host through the agent's DNS proxy (queries time out while the
//!   agent restarts, and in-cluster DNS times out with per-endpoint
//!   routes). So the host's rules are L4 only: DNS to kube-dns gets no
//!   `rules.dns` companion, and HTTP seen on a host side becomes a plain
//!   port, with a warning.
//! - The flow table has node names but no node labels, and the host of
//!   every node is identity 1: one policy for all of them,
//!   `nodeSelector: {}`, with the nodes that recorded the flows in the
//!   `cnpilot.io/nodes` annotation. A node that recorded nothing gets the
//!   same default deny; the recommendation says so.
//! - The other side of a host flow stays the workload's: a pod reaching
//!   the host needs `toEntities: [host]` in its own egress (its CNP), and
//!   the host reaching a pod of its node is let in by Cilium's
//!   allow-localhost (`auto` is `always` on Kubernetes), which the compiler
//!   models, so the pod's CNP gets no `fromEntities: [host]`.

use std::collections::BTreeMap;

use super::emit::{annotations, default_deny, subject_rules, L7Policy, Proposed, MANAGED_BY};
use super::selector::Chosen;
use super::universe::Universe;
use super::{proto_name, Sides, Subject};
use crate::model::{
    ApiVersion, CiliumPolicy, LabelSelector, ObjectMeta, PolicyKind, PolicySet, Rule,
};

/// The host policy's name (cluster-wide: one for the cluster).
pub const HOST_POLICY_NAME: &str = "cnpilot-host";
/// Annotation listing the nodes whose host flows are behind the policy.
pub const NODES_ANNOTATION: &str = "cnpilot.io/nodes";
/// What `nodeSelector: {}` selects, as the blast radius says it.
pub const EVERY_NODE: &str = "every node";

/// The host policy for the host's sides in `sides`; notes what it cannot
/// express (HTTP on a host side) and what it selects into `warnings`.
pub(crate) fn policy(
    sides: &Sides,
    universe: &Universe,
    selectors: &BTreeMap<u32, Chosen>,
    warnings: &mut Vec<String>,
) -> Proposed {
    let rules = subject_rules(
        sides,
        Subject::Host,
        "",
        universe,
        selectors,
        L7Policy::Host,
        // Host policies get no `toFQDNs` (see `super::fqdn`).
        None,
    );
    for (peer, (proto, port)) in &rules.l7_dropped {
        warnings.push(format!(
            "{HOST_POLICY_NAME}: HTTP was seen between host and {peer} on {}/{port}, but Cilium \
             takes no L7 rules in a host policy: allowed at L4 (any request)",
            proto_name(*proto)
        ));
    }
    let nodes: Vec<String> = universe.host_nodes.iter().cloned().collect();
    warnings.push(format!(
        "{HOST_POLICY_NAME} puts the host of every node into default deny (nodeSelector: {{}}), \
         learned from the host flows of {}: a node whose traffic was not recorded (a control \
         plane, say) loses what it needs; apply it with the host endpoint in policy audit mode \
         first",
        if nodes.is_empty() {
            "no named node".to_string()
        } else {
            nodes.join(", ")
        }
    ));
    let blast_radius = vec![EVERY_NODE.to_string()];
    let mut annotations = annotations("host", &blast_radius, &rules.evidence);
    annotations.insert(NODES_ANNOTATION.to_string(), nodes.join(", "));
    let policy = CiliumPolicy {
        api_version: ApiVersion::CiliumV2,
        kind: PolicyKind::CiliumClusterwideNetworkPolicy,
        metadata: ObjectMeta {
            name: HOST_POLICY_NAME.to_string(),
            namespace: None,
            labels: [(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into(),
            annotations,
            other: BTreeMap::new(),
        },
        spec: Some(Rule {
            node_selector: Some(LabelSelector::default()),
            ingress: Some(rules.ingress),
            egress: Some(rules.egress),
            enable_default_deny: Some(default_deny()),
            ..Rule::default()
        }),
        specs: None,
        status: None,
        description: None,
    };
    Proposed {
        file_name: format!("{HOST_POLICY_NAME}.yaml"),
        policy,
        subject: "host".to_string(),
        blast_radius,
        // `{}` selects nodes never recorded too: wider than the evidence.
        exact: false,
        rules: rules.evidence,
    }
}

/// Current host policies whose `nodeSelector` needs a node label: the
/// table has none, so they are evaluated as selecting no node.
pub(crate) fn current_selectors_unknown(current: &PolicySet) -> Vec<String> {
    let mut out = Vec::new();
    for p in &current.policies {
        let needs_label = p.policy.rules().any(|r| {
            r.node_selector.as_ref().is_some_and(|s| {
                s.match_labels.keys().any(|k| !k.starts_with("reserved:"))
                    || s.match_expressions
                        .iter()
                        .any(|e| !e.key.starts_with("reserved:"))
            })
        });
        if needs_label {
            out.push(format!(
                "current host policy {} ({}:{}) selects nodes by label; the flow table carries \
                 no node labels, so it is evaluated as selecting no node",
                p.policy.metadata.name, p.file, p.line
            ));
        }
    }
    out
}
