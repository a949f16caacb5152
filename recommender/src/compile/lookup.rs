//! The verdict: a handful of hash lookups in the compiled entries, then the
//! L7 rules of a redirected port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cnpilot_bpf::maps::{action, identity, Direction, PolicyKey, SubjectKey};
use serde::Serialize;

use super::hash::FastMap;
use super::CompiledPolicy;
use crate::model::values_mask as mask;
use crate::model::{Cidr, HttpRule};

/// Longest-prefix match over pod addresses and CIDR prefixes (the ipcache).
#[derive(Debug, Clone, Default)]
pub struct PrefixTable {
    /// Prefix lengths present, longest first.
    lens: Vec<u8>,
    map: FastMap<(u32, u8), u32>,
}

impl PrefixTable {
    pub(crate) fn new(cidrs: &[(Cidr, u32)], pods: &[(Ipv4Addr, u32)]) -> PrefixTable {
        let mut t = PrefixTable::default();
        for (c, id) in cidrs {
            if let Some((net, len)) = c.as_v4() {
                t.map.insert((net, len), *id);
                t.lens.push(len);
            }
        }
        for (a, id) in pods {
            t.map.insert((u32::from(*a), 32), *id);
            t.lens.push(32);
        }
        t.lens.sort_unstable_by(|a, b| b.cmp(a));
        t.lens.dedup();
        t
    }

    pub fn lookup(&self, addr: Ipv4Addr) -> u32 {
        let a = u32::from(addr);
        self.lens
            .iter()
            .find_map(|l| self.map.get(&(a & mask(*l), *l)).copied())
            .unwrap_or(identity::WORLD)
    }
}

/// A request seen by the L7 proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HttpRequest {
    pub method: String,
    /// The request target as sent (`:path`, query included).
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    Deny,
    DenyL7,
}

/// How one side (the source's egress or the destination's ingress) decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Not a local subject in this direction (e.g. world as a source).
    NotEnforced,
    /// Selected by no policy in this direction: allowed.
    NoPolicy,
    /// An allow entry matched.
    Allowed,
    /// Redirected to the L7 proxy and the request matched a rule (or none was given).
    L7Allowed,
    /// Redirected to the L7 proxy and no HTTP rule matched the request.
    L7Denied,
    /// An explicit deny entry matched.
    DenyRule,
    /// Selected in this direction and nothing allowed it.
    DefaultDeny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Side {
    pub outcome: Outcome,
    /// The deciding rule (see [`CompiledPolicy::rule`]); for `DefaultDeny`
    /// see [`CompiledPolicy::selected_by`].
    pub rule: Option<u32>,
}

/// A flow's verdict and the rules on each side that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub egress: Side,
    pub ingress: Side,
}

const NOT_ENFORCED: Side = Side {
    outcome: Outcome::NotEnforced,
    rule: None,
};

/// The keys a redirected side matched, for its L7 rules.
pub(super) type Redirects = [Option<PolicyKey>; 6];

impl CompiledPolicy {
    /// Whether `id` is enforced on this node (a local pod, or the host).
    pub fn is_local_subject(&self, id: u32) -> bool {
        id == identity::HOST || self.endpoint_ids.contains(&id)
    }

    /// One side of a verdict: `subject`'s policy in `direction` toward `peer`.
    pub fn check(
        &self,
        direction: Direction,
        subject: u32,
        peer: u32,
        proto: u8,
        dport: u16,
        http: Option<&HttpRequest>,
    ) -> Side {
        let (side, redirects) = self.check_l4(direction, subject, peer, proto, dport);
        match (side.outcome, http) {
            (Outcome::L7Allowed, Some(req)) => self.check_l7(&redirects, req),
            _ => side,
        }
    }

    pub(super) fn check_l4(
        &self,
        direction: Direction,
        subject: u32,
        peer: u32,
        proto: u8,
        dport: u16,
    ) -> (Side, Redirects) {
        let dir = direction as u8;
        let key = |peer, dport, proto| PolicyKey {
            subject,
            peer,
            dport,
            proto,
            direction: dir,
        };
        let keys = [
            key(peer, dport, proto),
            key(peer, 0, proto),
            key(peer, 0, 0),
            key(identity::ANY, dport, proto),
            key(identity::ANY, 0, proto),
            key(identity::ANY, 0, 0),
        ];
        let mut allow = None;
        let mut redirects: Redirects = [None; 6];
        let mut redirect_rule = None;
        for (i, k) in keys.iter().enumerate() {
            let Some(v) = self.entries.get(k) else {
                continue;
            };
            match v.action {
                action::DENY => {
                    return (
                        Side {
                            outcome: Outcome::DenyRule,
                            rule: Some(v.rule_id),
                        },
                        redirects,
                    )
                }
                action::ALLOW => allow = allow.or(Some(v.rule_id)),
                _ => {
                    redirects[i] = Some(*k);
                    redirect_rule = redirect_rule.or(Some(v.rule_id));
                }
            }
        }
        if let Some(rule) = allow {
            return (
                Side {
                    outcome: Outcome::Allowed,
                    rule: Some(rule),
                },
                redirects,
            );
        }
        if let Some(rule) = redirect_rule {
            return (
                Side {
                    outcome: Outcome::L7Allowed,
                    rule: Some(rule),
                },
                redirects,
            );
        }
        let selected = self.subjects.get(&SubjectKey {
            identity: subject,
            direction: direction as u32,
        });
        match selected {
            Some(info) if info.default_deny => (
                Side {
                    outcome: Outcome::DefaultDeny,
                    rule: info.selected_by.first().copied(),
                },
                redirects,
            ),
            _ => (
                Side {
                    outcome: Outcome::NoPolicy,
                    rule: None,
                },
                redirects,
            ),
        }
    }

    fn check_l7(&self, redirects: &Redirects, req: &HttpRequest) -> Side {
        let mut first = None;
        // A side redirected only to the DNS proxy has no HTTP to judge.
        if redirects.iter().flatten().all(|k| self.dns.contains_key(k)) {
            return Side {
                outcome: Outcome::L7Allowed,
                rule: redirects
                    .iter()
                    .flatten()
                    .find_map(|k| self.entries.get(k))
                    .map(|v| v.rule_id),
            };
        }
        for key in redirects.iter().flatten() {
            for (rule_id, rule) in self.l7.get(key).into_iter().flatten() {
                first = first.or(Some(*rule_id));
                if http_matches(rule, req) {
                    return Side {
                        outcome: Outcome::L7Allowed,
                        rule: Some(*rule_id),
                    };
                }
            }
        }
        Side {
            outcome: Outcome::L7Denied,
            rule: first,
        }
    }

    /// The verdict for a new connection from `src` to `dst` (identities as
    /// seen on this node): the source's egress and the destination's
    /// ingress must both allow it; deny wins; on a redirected port the HTTP
    /// request (if any) must match an L7 rule on each redirected side.
    pub fn verdict(
        &self,
        src: u32,
        dst: u32,
        proto: u8,
        dport: u16,
        http: Option<&HttpRequest>,
    ) -> Decision {
        let egress = if self.is_local_subject(src) {
            self.check(Direction::Egress, src, dst, proto, dport, http)
        } else {
            NOT_ENFORCED
        };
        let ingress = if self.is_local_subject(dst) {
            self.check(Direction::Ingress, dst, src, proto, dport, http)
        } else {
            NOT_ENFORCED
        };
        Decision {
            verdict: combine(egress.outcome, ingress.outcome),
            egress,
            ingress,
        }
    }
}

/// Both sides' outcomes to a verdict: an L3/L4 drop on either side beats an
/// L7 denial (the request never reaches the proxy).
pub fn combine(egress: Outcome, ingress: Outcome) -> Verdict {
    let l4_denied = |o| matches!(o, Outcome::DenyRule | Outcome::DefaultDeny);
    if l4_denied(egress) || l4_denied(ingress) {
        Verdict::Deny
    } else if egress == Outcome::L7Denied || ingress == Outcome::L7Denied {
        Verdict::DenyL7
    } else {
        Verdict::Allow
    }
}

/// Cilium's HTTP rule match: every field given must match; method, path and
/// host are full-match regexes; a header `Name` must be present, `Name: v`
/// must have exactly that value.
pub fn http_matches(rule: &HttpRule, req: &HttpRequest) -> bool {
    if rule
        .method
        .as_ref()
        .is_some_and(|m| !m.is_full_match(&req.method))
    {
        return false;
    }
    if rule
        .path
        .as_ref()
        .is_some_and(|p| !p.is_full_match(&req.path))
    {
        return false;
    }
    if let Some(h) = &rule.host {
        if !req.host.as_deref().is_some_and(|v| h.is_full_match(v)) {
            return false;
        }
    }
    rule.headers.iter().all(|spec| {
        let (name, value) = match spec.split_once(' ') {
            Some((n, v)) => (n.trim_end_matches(':'), Some(v.trim())),
            None => (spec.trim_end_matches(':'), None),
        };
        let found = req
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str());
        match (found, value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(got), Some(want)) => got == want,
        }
    })
}
