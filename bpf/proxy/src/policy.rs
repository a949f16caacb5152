//! What the proxy asks its caller per request: who is talking (identities),
//! whether the destination namespace enforces, and whether a rule allows the
//! request. The proxy itself knows no policy model: the agent plugs in the
//! recommender's evaluator through [`L7Policy`]; [`RulePolicy`] is a plain
//! rule list with Cilium's `rules.http` semantics for tests and the bench.

use std::net::IpAddr;

use cnpilot_recommender::compile::{http_matches, HttpRequest};
use cnpilot_recommender::model::HttpRegex;

/// A Cilium numeric security identity (reserved ones keep Cilium's numbers).
pub type Identity = u32;

/// Maps an address to its identity at the moment the proxy sees it (pod IPs
/// are reused, so this is asked when a connection is accepted, never later).
/// The source identity always comes from here, never from request headers.
pub trait IdentityResolver: Send + Sync + 'static {
    fn identity_of(&self, ip: IpAddr) -> Identity;
}

/// Enforcement mode of the destination's namespace. Asked for EVERY request,
/// so a flip applies to the next request of an already-open connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L7Mode {
    /// Forward everything; record what enforce would have denied.
    Audit,
    /// Answer denied requests with 403 without forwarding them.
    Enforce,
}

pub trait ModeResolver: Send + Sync + 'static {
    fn mode_for(&self, dst_ip: IpAddr, dst_identity: Identity) -> L7Mode;

    /// Whether `identity` is a pod whose namespace has a mode here (a pod
    /// of this node). A connection to anything else (the world, a name, a
    /// pod of another node) was redirected by the client's egress rules,
    /// so the client's mode decides.
    fn is_local(&self, identity: Identity) -> bool {
        let _ = identity;
        true
    }
}

/// A request as the policy sees it: method as sent (case-sensitive), the
/// NORMALIZED path (see `normalize`), the raw query, the host the client
/// addressed, and the header fields in order (names lower-cased).
#[derive(Debug)]
pub struct HttpRequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// What Envoy calls `:path` and Cilium's `path` regex is matched
    /// against: `path` plus `?query` when there is one.
    pub envoy_path: &'a str,
    pub host: Option<&'a str>,
    pub headers: &'a [(String, String)],
}

impl HttpRequestView<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L7Decision {
    /// `rule` names the rule that allowed it (evidence for the review).
    Allow {
        rule: String,
    },
    Deny {
        reason: String,
    },
}

pub trait L7Policy: Send + Sync + 'static {
    fn decide(
        &self,
        src_identity: Identity,
        dst_identity: Identity,
        dport: u16,
        request: &HttpRequestView<'_>,
    ) -> L7Decision;

    /// Whether HTTP rules apply to this connection at all. A connection
    /// that is here only for visibility (recorded, no L7 rule) must pass
    /// through untouched even when its bytes are not HTTP.
    fn has_http_rules(
        &self,
        _src_identity: Identity,
        _dst_identity: Identity,
        _dport: u16,
    ) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {rule}: {field} `{pattern}` is not a valid regex: {reason}")]
    BadRegex {
        rule: String,
        field: &'static str,
        pattern: String,
        reason: String,
    },
}

/// One `rules.http` entry, matched exactly as the evaluator matches it
/// (the recommender's `http_matches`: full-match regexes for method, path
/// and host; a header entry is `Name` (present) or `Name: value`).
#[derive(Clone, Debug)]
pub struct HttpRule(cnpilot_recommender::model::HttpRule);

impl HttpRule {
    pub fn new(
        rule: &str,
        method: Option<&str>,
        path: Option<&str>,
        host: Option<&str>,
        headers: &[&str],
    ) -> Result<Self, RuleError> {
        let compile = |field: &'static str, pattern: Option<&str>| {
            pattern
                .filter(|p| !p.is_empty())
                .map(|p| {
                    HttpRegex::new(p).map_err(|reason| RuleError::BadRegex {
                        rule: rule.to_string(),
                        field,
                        pattern: p.to_string(),
                        reason,
                    })
                })
                .transpose()
        };
        Ok(Self(cnpilot_recommender::model::HttpRule {
            method: compile("method", method)?,
            path: compile("path", path)?,
            host: compile("host", host)?,
            headers: headers.iter().map(|h| h.to_string()).collect(),
            header_matches: None,
        }))
    }

    pub fn matches(&self, req: &HttpRequestView<'_>) -> bool {
        let request = HttpRequest {
            method: req.method.to_string(),
            path: req.envoy_path.to_string(),
            host: req.host.map(str::to_string),
            headers: req.headers.iter().cloned().collect(),
        };
        http_matches(&self.0, &request)
    }
}

/// The L7 part of one peer's `toPorts` entry: which sources, which
/// destination and port, and its HTTP rules (empty = every request allowed,
/// as Cilium does for a peer allowed at L4 on a port others restrict at L7).
#[derive(Clone, Debug)]
pub struct PeerRule {
    pub name: String,
    /// `None` matches any source identity.
    pub src_identities: Option<Vec<Identity>>,
    pub dst_identity: Identity,
    pub port: u16,
    pub http: Vec<HttpRule>,
}

/// Allow-list semantics: a request is allowed when some peer rule selecting
/// (source, destination, port) has an HTTP rule matching it.
#[derive(Clone, Debug, Default)]
pub struct RulePolicy {
    pub rules: Vec<PeerRule>,
}

impl L7Policy for RulePolicy {
    fn decide(
        &self,
        src_identity: Identity,
        dst_identity: Identity,
        dport: u16,
        request: &HttpRequestView<'_>,
    ) -> L7Decision {
        let mut selected = false;
        for peer in self.rules.iter().filter(|r| {
            r.dst_identity == dst_identity
                && r.port == dport
                && r.src_identities
                    .as_ref()
                    .is_none_or(|s| s.contains(&src_identity))
        }) {
            selected = true;
            if peer.http.is_empty() {
                return L7Decision::Allow {
                    rule: format!("{} (all HTTP)", peer.name),
                };
            }
            if let Some(i) = peer.http.iter().position(|h| h.matches(request)) {
                return L7Decision::Allow {
                    rule: format!("{}/http[{i}]", peer.name),
                };
            }
        }
        L7Decision::Deny {
            reason: if selected {
                "no http rule matches".to_string()
            } else {
                "no rule for this peer and port".to_string()
            },
        }
    }
}
