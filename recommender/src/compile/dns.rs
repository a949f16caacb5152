//! The DNS proxy's half of a verdict: on a side redirected by `rules.dns`,
//! the query name decides.

use cnpilot_bpf::maps::Direction;

use super::fqdn::fqdn_matches;
use super::lookup::{Outcome, Side};
use super::CompiledPolicy;

impl CompiledPolicy {
    /// Like [`CompiledPolicy::check`], but on a side redirected by
    /// `rules.dns` the query name decides: `L7Allowed` (rule = the DNS
    /// rule's) when a `matchName` / `matchPattern` of the rules on the
    /// matched keys matches `qname`, else `L7Denied` (Cilium's proxy answers
    /// REFUSED). Sides not redirected for DNS behave as `check(.., None)`.
    pub fn check_dns(
        &self,
        direction: Direction,
        subject: u32,
        peer: u32,
        proto: u8,
        dport: u16,
        qname: &str,
    ) -> Side {
        let (side, redirects) = self.check_l4(direction, subject, peer, proto, dport);
        if side.outcome != Outcome::L7Allowed {
            return side;
        }
        // Cilium's proxy holds, per port, the DNS rules of every selector
        // that picks the destination, and lets a query through when any
        // matches (pkg/fqdn/dnsproxy/proxy.go, `CheckAllowed`): the rules
        // of all matched keys are one list.
        let mut rules = redirects
            .iter()
            .flatten()
            .filter_map(|k| self.dns.get(k))
            .flatten()
            .peekable();
        let Some((first, _)) = rules.peek().copied() else {
            return side;
        };
        let first = *first;
        for (rule_id, rule) in rules {
            if fqdn_matches(
                rule.match_name.as_deref(),
                rule.match_pattern.as_deref(),
                qname,
            ) {
                return Side {
                    outcome: Outcome::L7Allowed,
                    rule: Some(*rule_id),
                };
            }
        }
        Side {
            outcome: Outcome::L7Denied,
            rule: Some(first),
        }
    }
}
