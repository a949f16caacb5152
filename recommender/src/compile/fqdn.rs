//! DNS names in policy: Cilium's `matchName` / `matchPattern` matching,
//! shared by `toFQDNs` (which addresses a rule selects) and `rules.dns`
//! (which queries the DNS proxy lets through).
//!
//! Cilium compiles both into anchored regexes
//! (pkg/fqdn/matchpattern/matchpattern.go, `ToAnchoredRegexp`; names are
//! put in FQDN form with `dns.FQDN` and lower-cased, pkg/policy/api/fqdn.go
//! `ToRegex`, and the proxy lower-cases the query the same way,
//! pkg/fqdn/dnsproxy/proxy.go `CheckAllowed`). The same language is matched
//! here without regexes, so a pattern from a policy file can never make the
//! matcher panic or blow up.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::{IdentityInput, CIDR_IDENTITY_BASE};
use crate::model::{FqdnSelector, PolicySet};

/// A world address DNS answers gave for `names` (lower-case, no trailing
/// dot), with the identity the agent allocated for it.
///
/// Give each address an identity of its own: an identity is selected as a
/// whole, so one shared by several addresses is selected by every CIDR rule
/// that covers any of them (Cilium's identities differ there, as a covering
/// CIDR adds a label to the address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FqdnInput {
    pub addr: Ipv4Addr,
    pub id: u32,
    pub names: Vec<String>,
}

/// First identity number the agent allocates FQDN /32 identities from.
///
/// Cilium allocates CIDR and FQDN identities from one local scope
/// (`1 << 24` upward, the node never shares them). Here the compiler numbers
/// CIDR prefixes itself, from [`CIDR_IDENTITY_BASE`] upward in policy order,
/// on every compile, while the agent hands out FQDN identities over time as
/// answers arrive. Splitting the scope in two halves (2^23 numbers each)
/// keeps them from ever colliding without the two having to coordinate.
pub const FQDN_IDENTITY_BASE: u32 = CIDR_IDENTITY_BASE + (1 << 23);

// Both halves stay inside the local scope (below 1 << 25).
const _: () = assert!(FQDN_IDENTITY_BASE > CIDR_IDENTITY_BASE && FQDN_IDENTITY_BASE < 1 << 25);

/// Cilium's longest `matchName` / `matchPattern`
/// (pkg/fqdn/matchpattern/matchpattern.go, `MaxFQDNLength`).
pub const MAX_FQDN_LENGTH: usize = 255;

/// Whether `name` (a DNS name, any case, trailing dot or not) matches
/// `match_name` (exact, case-insensitive) or `match_pattern` (Cilium's
/// wildcards: `*` is any run, possibly empty, of label characters
/// `[-a-z0-9_]` within one label; a pattern made only of `*` (optionally
/// with a trailing dot) matches every name; a leading `**.` stands for one
/// or more whole labels). With both given either may match; with neither,
/// nothing does. A pattern Cilium would reject matches nothing.
pub fn fqdn_matches(match_name: Option<&str>, match_pattern: Option<&str>, name: &str) -> bool {
    let name = fqdn_form(name);
    match_name.is_some_and(|m| fqdn_form(m) == name)
        || match_pattern.is_some_and(|p| pattern_matches(p, &name))
}

/// Lower-case, trimmed, with the root's trailing dot (Go's `dns.Fqdn`).
fn fqdn_form(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

fn is_label_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// Characters Cilium allows in a `matchPattern` (`allowedPatternChars`).
pub(crate) fn is_pattern_char(c: u8) -> bool {
    is_label_char(c) || c == b'.' || c == b'*'
}

/// `*`, `**`, `*.`, ...: Cilium's `isDNSWildcard`, which matches every name.
fn is_match_all(pattern: &str) -> bool {
    let p = pattern.strip_suffix('.').unwrap_or(pattern);
    !p.is_empty() && p.bytes().all(|c| c == b'*')
}

/// One or more whole labels, each followed by its dot: `([-a-z0-9_]+[.])+`.
fn is_labels(s: &[u8]) -> bool {
    !s.is_empty()
        && s.ends_with(b".")
        && s.split(|c| *c == b'.')
            .take(s.iter().filter(|c| **c == b'.').count())
            .all(|label| !label.is_empty() && label.iter().all(|c| is_label_char(*c)))
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim().to_ascii_lowercase();
    if pattern.len() > MAX_FQDN_LENGTH || !pattern.bytes().all(is_pattern_char) {
        return false;
    }
    let name = name.as_bytes();
    if is_match_all(&pattern) {
        // `(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)`: every well-formed name, and the
        // root (a resolver's priming query).
        return name == b"." || is_labels(name);
    }
    let mut pattern = pattern.into_bytes();
    if !pattern.ends_with(b".") {
        pattern.push(b'.');
    }
    let stars = pattern.iter().take_while(|c| **c == b'*').count();
    if stars >= 2 && pattern.get(stars) == Some(&b'.') {
        // The multi-level prefix: only at the start and before a dot, as
        // Cilium allows it; `**` anywhere else is a plain `*`.
        let rest = &pattern[stars + 1..];
        return (1..=name.len()).any(|i| is_labels(&name[..i]) && glob_matches(rest, &name[i..]));
    }
    glob_matches(&pattern, name)
}

/// `pattern` (literal bytes and `*`) against all of `name`, where a run of
/// `*` matches zero or more label characters. A table over prefixes: both
/// sides are at most a few hundred bytes.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    // row[j]: pattern[..i] matches name[..j].
    let mut row = vec![false; name.len() + 1];
    row[0] = true;
    for (i, &p) in pattern.iter().enumerate() {
        if p == b'*' && i > 0 && pattern[i - 1] == b'*' {
            continue;
        }
        let mut next = vec![false; name.len() + 1];
        if p == b'*' {
            next[0] = row[0];
            for j in 1..=name.len() {
                next[j] = row[j] || (next[j - 1] && is_label_char(name[j - 1]));
            }
        } else {
            for j in 1..=name.len() {
                next[j] = row[j - 1] && name[j - 1] == p;
            }
        }
        row = next;
    }
    row[name.len()]
}

/// The DNS answers that become /32s of their own. A pod's address keeps
/// its endpoint identity: Cilium's FQDN name manager upserts answer
/// prefixes into the ipcache with `source.Generated`
/// (pkg/fqdn/namemanager/manager.go, `upsertMetadata`), the weakest source,
/// which may not overwrite an endpoint's (pkg/source/source.go,
/// `AllowOverwrite`). An address given twice keeps its first identity.
pub(super) fn fqdn_addrs(
    identities: &[IdentityInput],
    inputs: &[FqdnInput],
    warnings: &mut Vec<String>,
) -> Vec<(Ipv4Addr, u32, Vec<String>)> {
    let pods: BTreeSet<Ipv4Addr> = identities
        .iter()
        .flat_map(|i| i.addrs.iter().copied())
        .collect();
    let mut out: Vec<(Ipv4Addr, u32, Vec<String>)> = Vec::new();
    for f in inputs {
        if pods.contains(&f.addr) {
            continue;
        }
        match out.iter_mut().find(|(a, _, _)| *a == f.addr) {
            Some((_, id, names)) if *id == f.id => names.extend(f.names.iter().cloned()),
            Some((_, id, _)) => warnings.push(format!(
                "DNS answer address {} given identities {} and {}: keeping {}",
                f.addr, id, f.id, id
            )),
            None => out.push((f.addr, f.id, f.names.clone())),
        }
    }
    out
}

/// Every `toFQDNs` selector of the set, whatever it selects on this node.
pub(super) fn collect_fqdn_selectors(set: &PolicySet) -> Vec<FqdnSelector> {
    let selectors: BTreeSet<&FqdnSelector> = set
        .policies
        .iter()
        .flat_map(|p| p.policy.rules())
        .flat_map(|r| r.egress.iter().flatten())
        .flat_map(|e| e.to_fqdns.iter().flatten())
        .collect();
    selectors.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_name_is_exact_case_insensitive_and_ignores_the_trailing_dot() {
        let table = [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "API.Example.COM.", true),
            ("API.example.com.", "api.example.com", true),
            ("api.example.com", "example.com", false),
            ("api.example.com", "x.api.example.com", false),
            ("api.example.com", "api.example.co", false),
            ("api.example.com", "api-example.com", false),
        ];
        for (m, name, want) in table {
            assert_eq!(fqdn_matches(Some(m), None, name), want, "{m} vs {name}");
        }
    }

    #[test]
    fn match_pattern_follows_cilium() {
        let table = [
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "A-b_1.EXAMPLE.com.", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "a.example.org", false),
            ("*example.com", "example.com", true),
            ("*example.com", "myexample.com", true),
            ("*example.com", "a.example.com", false),
            ("sub*.example.com", "sub.example.com", true),
            ("sub*.example.com", "subdomain.example.com", true),
            ("sub*.example.com", "www.example.com", false),
            ("a.*.com", "a.b.com", true),
            ("a.*.com", "a.b.c.com", false),
            ("*.*.example.com", "a.b.example.com", true),
            ("*.*.example.com", "a.example.com", false),
            ("example.*", "example.io", true),
            ("example.com", "example.com", true),
            ("example.com.", "EXAMPLE.com", true),
            ("example.com", "wexample.com", false),
            // A lone wildcard: every name, and the root.
            ("*", "example.com", true),
            ("*", "a.b.c.d", true),
            ("*", ".", true),
            ("**", "a.b", true),
            ("*.", "a.b", true),
            // `**.` at the start: one or more labels.
            ("**.example.com", "a.example.com", true),
            ("**.example.com", "a.b.c.example.com", true),
            ("**.example.com", "example.com", false),
            ("***.example.com", "a.b.example.com", true),
            ("**.*.example.com", "a.b.example.com", true),
            ("**.*.example.com", "b.example.com", false),
            // `**` elsewhere is one `*`: it stays within a label.
            ("a.**.com", "a.b.com", true),
            ("a.**.com", "a.b.c.com", false),
            ("**example.com", "a.example.com", false),
            ("**example.com", "myexample.com", true),
            // Patterns Cilium rejects match nothing, and never panic.
            ("a.(b|c).com", "a.b.com", false),
            ("[a].com", "a.com", false),
            ("a b.com", "a b.com", false),
            ("", "example.com", false),
        ];
        for (p, name, want) in table {
            assert_eq!(fqdn_matches(None, Some(p), name), want, "{p} vs {name}");
        }
    }

    #[test]
    fn neither_selector_matches_nothing_and_either_may_match() {
        assert!(!fqdn_matches(None, None, "example.com"));
        assert!(fqdn_matches(
            Some("other.com"),
            Some("*.example.com"),
            "a.example.com"
        ));
        assert!(fqdn_matches(
            Some("a.example.com"),
            Some("*.other.com"),
            "a.example.com"
        ));
    }

    #[test]
    fn long_and_odd_inputs_do_not_panic() {
        let long = "*".repeat(300);
        assert!(!fqdn_matches(None, Some(&long), "a.com"));
        let deep = "a.".repeat(120);
        assert!(fqdn_matches(None, Some("**.a"), &deep));
        assert!(!fqdn_matches(None, Some("**.b"), &deep));
        for p in ["*", "**.", ".", "..", "*.*.", "\u{e9}.com", "**"] {
            for n in ["", ".", "..", "a..b", "\u{e9}.com", "*"] {
                let _ = fqdn_matches(Some(p), Some(p), n);
            }
        }
    }
}
