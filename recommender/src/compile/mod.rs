//! Compilation: policies + identities → the flat, indexed entries the
//! datapath looks up (the layout of `cnpilot_bpf::maps`), compiled once and
//! shared by the evaluator.

mod dns;
mod expand;
mod fqdn;
mod hash;
mod lookup;
mod ports;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use cnpilot_bpf::maps::{
    IpcacheKey, IpcacheValue, PolicyKey, PolicyValue, SubjectKey, SubjectValue,
};
use serde::Serialize;

use crate::model::{Cidr, DnsRule, FqdnSelector, HttpRule};
pub use fqdn::{fqdn_matches, FqdnInput, FQDN_IDENTITY_BASE, MAX_FQDN_LENGTH};
use hash::FastMap;
pub use lookup::{
    combine, http_matches, Decision, HttpRequest, Outcome, PrefixTable, Side, Verdict,
};

/// One workload identity the compiler resolves selectors against: Cilium's
/// numeric identity with the namespace and labels it stands for.
#[derive(Debug, Clone, Default)]
pub struct IdentityInput {
    pub id: u32,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Named container ports of the pods behind this identity.
    pub named_ports: BTreeMap<String, u16>,
    /// Pod addresses (for the ipcache).
    pub addrs: Vec<Ipv4Addr>,
}

/// The node the compiled policy is for (host firewall subject, identity 1).
#[derive(Debug, Clone, Default)]
pub struct NodeInput {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Where a compiled entry came from, for evidence in review output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub file: String,
    pub line: usize,
    /// `spec` or `specs[N]`, then the section and index: `spec.ingress[0]`.
    /// Empty section means "the policy as a whole" (default deny).
    pub path: String,
    /// Unmodelled constructs in this rule that could change its effect.
    pub unmodelled: Vec<&'static str>,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_empty() {
            return f.write_str(&self.path);
        }
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{} {}", self.kind, ns, self.name, self.path)?,
            None => write!(f, "{} {} {}", self.kind, self.name, self.path)?,
        }
        write!(f, " ({}:{})", self.file, self.line)?;
        if !self.unmodelled.is_empty() {
            write!(f, " [not modelled: {}]", self.unmodelled.join(", "))?;
        }
        Ok(())
    }
}

/// First identity number of Cilium's local (CIDR) identity range.
pub const CIDR_IDENTITY_BASE: u32 = 16_777_217;

/// Policies compiled against a set of identities, for one node.
///
/// Keys and lookup order are the datapath's (`bpf/c/cnpilot.h`): for a
/// subject, direction, peer, protocol and port, look up (peer, port, proto),
/// (peer, 0, proto), (peer, 0, 0), then the same with peer 0 (any). A deny
/// among them wins; else an allow; else a redirect (L7 rules decide); else
/// the subject's default-deny flag decides.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicy {
    pub(crate) entries: FastMap<PolicyKey, PolicyValue>,
    pub(crate) subjects: FastMap<SubjectKey, SubjectInfo>,
    pub(crate) l7: FastMap<PolicyKey, Vec<(u32, Arc<HttpRule>)>>,
    /// `rules.dns` of the keys redirected to the DNS proxy: a key is in
    /// here exactly when its REDIRECT carries the DNS proxy's port.
    pub(crate) dns: FastMap<PolicyKey, Vec<(u32, Arc<DnsRule>)>>,
    /// Every `toFQDNs` selector of the set, for [`CompiledPolicy::fqdn_selects`].
    pub(crate) fqdn_selectors: Vec<FqdnSelector>,
    /// Allowing `toFQDNs` rules and the subjects they select, checked once
    /// every rule is compiled (`warn_fqdns_without_dns`).
    pub(crate) fqdn_rules: Vec<(u32, Vec<u32>)>,
    /// Subjects with an allowing `rules.dns` rule on their egress.
    pub(crate) dns_subjects: BTreeSet<u32>,
    pub(crate) rules: Vec<RuleRef>,
    pub(crate) endpoint_ids: BTreeSet<u32>,
    pub(crate) cidr_ids: Vec<(Cidr, u32)>,
    pub(crate) endpoint_addrs: Vec<(Ipv4Addr, u32)>,
    /// World addresses named by DNS answers, as /32s (no pod address).
    pub(crate) fqdn_addrs: Vec<(Ipv4Addr, u32)>,
    pub(crate) ipcache: lookup::PrefixTable,
    pub(crate) proxy_port: u16,
    pub(crate) dns_proxy_port: u16,
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SubjectInfo {
    pub default_deny: bool,
    /// Rule ids of the policies that select the subject in this direction.
    pub selected_by: Vec<u32>,
}

impl CompiledPolicy {
    /// Compile `set` for the node `local_node` (`None`: a node no
    /// `nodeSelector` selects). Selectors are resolved against
    /// `identities`; reserved identities use Cilium's numbers; CIDR
    /// prefixes get identities from [`CIDR_IDENTITY_BASE`].
    pub fn compile(
        set: &crate::model::PolicySet,
        identities: &[IdentityInput],
        local_node: Option<&NodeInput>,
    ) -> CompiledPolicy {
        expand::compile(set, identities, local_node, &[])
    }

    /// [`CompiledPolicy::compile`] with the world addresses DNS answers gave:
    /// each becomes a /32 of its own identity, selected by `toFQDNs` when
    /// one of its names matches, and by `toEntities: [world]`, `toCIDR` and
    /// `toCIDRSet` like any world address. An address that is also a pod's
    /// is left out (see `expand::fqdn_addrs`).
    pub fn compile_with_fqdns(
        set: &crate::model::PolicySet,
        identities: &[IdentityInput],
        local_node: Option<&NodeInput>,
        fqdns: &[FqdnInput],
    ) -> CompiledPolicy {
        expand::compile(set, identities, local_node, fqdns)
    }

    /// Whether some `toFQDNs` selector of the set matches `name`: the agent
    /// allocates FQDN identities only for such names' addresses.
    pub fn fqdn_selects(&self, name: &str) -> bool {
        self.fqdn_selectors
            .iter()
            .any(|s| fqdn_matches(s.match_name.as_deref(), s.match_pattern.as_deref(), name))
    }

    /// The port the HTTP proxy listens on, written into the REDIRECT entries
    /// of `rules.http` (those of `rules.dns` keep the DNS proxy's port).
    pub fn set_proxy_port(&mut self, port: u16) {
        self.proxy_port = port;
        for (k, v) in self.entries.iter_mut() {
            if v.action == cnpilot_bpf::maps::action::REDIRECT && !self.dns.contains_key(k) {
                v.proxy_port = port;
            }
        }
    }

    /// The port the DNS proxy listens on, written into the REDIRECT entries
    /// compiled from `rules.dns` (and only those).
    pub fn set_dns_proxy_port(&mut self, port: u16) {
        self.dns_proxy_port = port;
        for (k, v) in self.entries.iter_mut() {
            if v.action == cnpilot_bpf::maps::action::REDIRECT && self.dns.contains_key(k) {
                v.proxy_port = port;
            }
        }
    }

    /// Entries for the datapath's `policy` map, sorted by key.
    pub fn policy_entries(&self) -> Vec<(PolicyKey, PolicyValue)> {
        let mut v: Vec<_> = self.entries.iter().map(|(k, v)| (*k, *v)).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Entries for the datapath's `subjects` map: every selected subject
    /// and direction (the datapath looks up no rule, deny rules included,
    /// for a subject without an entry), flagged when default-deny.
    pub fn subject_entries(&self) -> Vec<(SubjectKey, SubjectValue)> {
        let mut v: Vec<_> = self
            .subjects
            .iter()
            .map(|(k, i)| {
                let flags = if i.default_deny {
                    cnpilot_bpf::maps::SUBJECT_F_DEFAULT_DENY
                } else {
                    0
                };
                (*k, SubjectValue { flags })
            })
            .collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Entries for the datapath's `ipcache` LPM trie: pod addresses, CIDR
    /// prefixes and the /32s of DNS answers (addresses in network byte order).
    pub fn ipcache_entries(&self) -> Vec<(IpcacheKey, IpcacheValue)> {
        let pods = self.endpoint_addrs.iter().map(|(a, id)| {
            (
                IpcacheKey {
                    prefixlen: 32,
                    addr: u32::from(*a).to_be(),
                },
                IpcacheValue {
                    identity: *id,
                    flags: cnpilot_bpf::maps::IPCACHE_F_LOCAL_ENDPOINT,
                },
            )
        });
        let cidrs = self.cidr_ids.iter().filter_map(|(c, id)| {
            let (net, len) = c.as_v4()?;
            // A DNS answer's /32 of the same address replaces it (one key
            // per prefix; the answer's identity is selected wherever the
            // prefix is).
            if len == 32 && self.fqdn_addrs.iter().any(|(a, _)| u32::from(*a) == net) {
                return None;
            }
            Some((
                IpcacheKey {
                    prefixlen: u32::from(len),
                    addr: net.to_be(),
                },
                IpcacheValue {
                    identity: *id,
                    flags: 0,
                },
            ))
        });
        let fqdns = self.fqdn_addrs.iter().map(|(a, id)| {
            (
                IpcacheKey {
                    prefixlen: 32,
                    addr: u32::from(*a).to_be(),
                },
                IpcacheValue {
                    identity: *id,
                    flags: 0,
                },
            )
        });
        pods.chain(cidrs).chain(fqdns).collect()
    }

    /// The rule behind a `rule_id` of an entry or a decision.
    pub fn rule(&self, rule_id: u32) -> Option<&RuleRef> {
        self.rules.get(rule_id as usize)
    }

    /// The identity of an IPv4 address (longest prefix; world if none).
    pub fn identity_of_addr(&self, addr: Ipv4Addr) -> u32 {
        self.ipcache.lookup(addr)
    }

    /// The policies selecting `subject` in `direction`, as rule ids.
    pub fn selected_by(&self, subject: u32, direction: cnpilot_bpf::maps::Direction) -> &[u32] {
        self.subjects
            .get(&SubjectKey {
                identity: subject,
                direction: direction as u32,
            })
            .map_or(&[], |i| i.selected_by.as_slice())
    }

    /// Compile-time notes (e.g. a named port no identity defines).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}
