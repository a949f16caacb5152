//! The user-facing policy types: `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy, as serde types that mirror the CRD schema.
//!
//! Every object the schema closes (`additionalProperties: false`) is
//! `deny_unknown_fields`, so a typo is a parse error that lists the valid
//! field names. Fields the evaluator does not model yet are kept verbatim
//! (`serde_json::Value`) so they round-trip, and are reported as warnings by
//! [`load`](crate::model::load).

mod check;
mod icmp;
mod load;
mod ports;
mod selector;
mod values;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use icmp::{IcmpFamily, IcmpField, IcmpRule, IcmpType};
pub use load::{load_paths, load_str, load_str_at, Diagnostic, LoadError, LoadedPolicy, PolicySet};
pub use ports::{DnsRule, HttpRule, L7Rules, PortProtocol, PortRule, PortSpec, Protocol};
pub use selector::{LabelSelector, Operator, Requirement};
pub(crate) use values::mask as values_mask;
pub use values::{Cidr, Entity, HttpRegex};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

impl PolicyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
            PolicyKind::CiliumClusterwideNetworkPolicy => "CiliumClusterwideNetworkPolicy",
        }
    }
}

/// One CNP or CCNP document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CiliumPolicy {
    pub api_version: ApiVersion,
    pub kind: PolicyKind,
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Rule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<Rule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// A top-level `description`: not in the CRD schema, yet Cilium's own
    /// example policies carry one and the API server prunes it. Loaded with
    /// a warning and never written back, as the cluster would drop it.
    #[serde(default, skip_serializing)]
    pub description: Option<Value>,
}

impl CiliumPolicy {
    /// `spec` followed by the entries of `specs`, as Cilium merges them.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.spec.iter().chain(self.specs.iter().flatten())
    }

    /// The namespace that scopes this policy's selectors: `None` for a CCNP.
    pub fn scope_namespace(&self) -> Option<&str> {
        match self.kind {
            PolicyKind::CiliumNetworkPolicy => {
                Some(self.metadata.namespace.as_deref().unwrap_or("default"))
            }
            PolicyKind::CiliumClusterwideNetworkPolicy => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "cilium.io/v2")]
    CiliumV2,
}

/// Kubernetes object metadata: open in the CRD schema, so not closed here.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A policy rule (`spec` or one entry of `specs`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_deny: Option<Vec<IngressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_deny: Option<Vec<EgressRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<RuleLabel>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleLabel {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One entry of `ingress` or `ingressDeny` (deny rules may not carry L7
/// rules; the validator rejects them there).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "fromCIDR", skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<Cidr>>,
    #[serde(
        default,
        rename = "fromCIDRSet",
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    // Not modelled by the evaluator: kept, round-tripped, warned about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_nodes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
}

/// One entry of `egress` or `egressDeny`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<LabelSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<Entity>>,
    #[serde(default, rename = "toCIDR", skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<Cidr>>,
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Option::is_none")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    // Not modelled by the evaluator: kept, round-tripped, warned about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_services: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_groups: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_requires: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_nodes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Value>,
}

/// One `toFQDNs` entry: the world addresses DNS answers gave for a name
/// (`matchName`, exact) or for names a pattern matches (`matchPattern`,
/// `*` for any run of label characters). Exactly one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// `fromCIDRSet` / `toCIDRSet` entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    #[serde(default, rename = "except", skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_ref: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr_group_selector: Option<Value>,
}

/// The parts of an ingress or egress rule the compiler uses, with the
/// direction's field names erased.
#[derive(Debug, Clone, Copy)]
pub struct PeerRule<'a> {
    pub endpoints: Option<&'a [LabelSelector]>,
    pub entities: Option<&'a [Entity]>,
    pub cidrs: Option<&'a [Cidr]>,
    pub cidr_sets: Option<&'a [CidrRule]>,
    pub to_ports: Option<&'a [PortRule]>,
    pub icmps: Option<&'a [IcmpRule]>,
    /// `toFQDNs` (egress only).
    pub fqdns: Option<&'a [FqdnSelector]>,
    /// Names of unmodelled peer fields present in the rule (`toServices`, ...).
    pub unmodelled_peers: [Option<&'static str>; 5],
}

impl IngressRule {
    pub fn as_peer_rule(&self) -> PeerRule<'_> {
        PeerRule {
            endpoints: self.from_endpoints.as_deref(),
            entities: self.from_entities.as_deref(),
            cidrs: self.from_cidr.as_deref(),
            cidr_sets: self.from_cidr_set.as_deref(),
            to_ports: self.to_ports.as_deref(),
            icmps: self.icmps.as_deref(),
            fqdns: None,
            unmodelled_peers: [
                self.from_requires.as_ref().map(|_| "fromRequires"),
                self.from_groups.as_ref().map(|_| "fromGroups"),
                self.from_nodes.as_ref().map(|_| "fromNodes"),
                None,
                None,
            ],
        }
    }
}

impl EgressRule {
    pub fn as_peer_rule(&self) -> PeerRule<'_> {
        PeerRule {
            endpoints: self.to_endpoints.as_deref(),
            entities: self.to_entities.as_deref(),
            cidrs: self.to_cidr.as_deref(),
            cidr_sets: self.to_cidr_set.as_deref(),
            to_ports: self.to_ports.as_deref(),
            icmps: self.icmps.as_deref(),
            fqdns: self.to_fqdns.as_deref(),
            unmodelled_peers: [
                self.to_services.as_ref().map(|_| "toServices"),
                self.to_groups.as_ref().map(|_| "toGroups"),
                self.to_requires.as_ref().map(|_| "toRequires"),
                self.to_nodes.as_ref().map(|_| "toNodes"),
                None,
            ],
        }
    }
}

/// Every field name the evaluator keeps but does not model, for warnings.
pub const UNMODELLED_FIELDS: &[&str] = &[
    "toServices",
    "toGroups",
    "fromGroups",
    "toRequires",
    "fromRequires",
    "toNodes",
    "fromNodes",
    "authentication",
    "kafka",
    "l7proto",
    "l7",
    "serverNames",
    "originatingTLS",
    "terminatingTLS",
    "listener",
    "log",
    "cidrGroupRef",
    "cidrGroupSelector",
];
