//! What went wrong applying one policy, as one line a person can act on.
//!
//! The API server's answers are `Status` objects; the ones `apply` meets
//! are told apart by code and, where a code is ambiguous (404), by what the
//! details name. Anything that never reached an answer is a transport
//! error: the server URL and the cause chain say where and why.

use std::fmt;

use kube::core::Status;
use regex::Regex;

/// The reason a policy was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// 409 on server-side apply: fields owned by other field managers.
    #[error(
        "conflict with field manager{} {}{}: rerun with --force-conflicts to take {} over",
        plural(.managers.len()),
        quoted(.managers),
        fields_suffix(.fields),
        if .fields.len() == 1 { "it" } else { "them" }
    )]
    Conflict {
        managers: Vec<String>,
        fields: Vec<String>,
    },
    /// 403: RBAC.
    #[error(
        "forbidden: {who} cannot {verb} {resource}{scope}: bind the `cnpilot-apply` ClusterRole \
         of deploy/rbac.yaml to whoever runs `cnpilot apply`"
    )]
    Forbidden {
        who: String,
        verb: String,
        resource: String,
        scope: Scope,
    },
    /// 404 on the resource itself: the CRD is not installed.
    #[error("the cluster has no cilium.io/v2 {kind} CRD: is Cilium installed?")]
    MissingCrd { kind: &'static str },
    /// 404 naming the namespace.
    #[error("namespace {0} does not exist")]
    MissingNamespace(String),
    /// 401: the credentials of the kubeconfig were refused.
    #[error("the API server at {server} refused the credentials (401 Unauthorized): {message}")]
    Unauthorized { server: String, message: String },
    /// The kubeconfig's credentials could not be produced (exec plugin,
    /// token file, OIDC refresh): nothing was sent.
    #[error("authenticating to the API server at {server}: {cause}")]
    Auth { server: String, cause: String },
    /// No answer at all.
    #[error("cannot reach the API server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    /// Any other refusal, with the server's own words.
    #[error("the API server refused it ({code}{}): {message}", if .reason.is_empty() { String::new() } else { format!(" {}", .reason) })]
    Rejected {
        code: u16,
        reason: String,
        message: String,
    },
    /// The request could not be built, or the answer not read.
    #[error("{0}")]
    Other(String),
}

/// Where a forbidden request was aimed, for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Namespace(String),
    Cluster,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Namespace(ns) => write!(f, " in namespace {ns}"),
            Scope::Cluster => write!(f, " (cluster-wide)"),
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fields_suffix(fields: &[String]) -> String {
    const SHOWN: usize = 3;
    match fields.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" over {}", fields.join(", ")),
        n => format!(" over {} (+{} more)", fields[..SHOWN].join(", "), n - SHOWN),
    }
}

/// What the failing request was, to name it in messages.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    /// The RBAC verb of the request (`get`, `patch`).
    pub verb: &'a str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespace: Option<&'a str>,
    /// The API server URL, from the kubeconfig.
    pub server: &'a str,
}

/// The one-line reason for a failed request.
pub fn classify(err: kube::Error, req: &Attempt<'_>) -> ApplyError {
    match err {
        kube::Error::Api(status) => from_status(&status, req),
        kube::Error::SerdeError(e) => ApplyError::Other(format!(
            "the API server's answer was not a {}: {e}",
            req.kind
        )),
        kube::Error::BuildRequest(e) => ApplyError::Other(format!("building the request: {e}")),
        kube::Error::Auth(e) => ApplyError::Auth {
            server: req.server.to_string(),
            cause: cause_chain(&e),
        },
        // Everything else happened before an answer: connecting, TLS, the
        // connection dropping.
        other => ApplyError::Unreachable {
            server: req.server.to_string(),
            cause: cause_chain(&other),
        },
    }
}

fn from_status(status: &Status, req: &Attempt<'_>) -> ApplyError {
    match status.code {
        409 => match conflict_of(status) {
            Some((managers, fields)) => ApplyError::Conflict { managers, fields },
            None => rejected(status),
        },
        403 => forbidden(status, req),
        404 => {
            let names_namespace = status
                .details
                .as_ref()
                .is_some_and(|d| d.kind == "namespaces");
            match (names_namespace, req.namespace) {
                (true, Some(ns)) => ApplyError::MissingNamespace(ns.to_string()),
                _ => ApplyError::MissingCrd { kind: req.kind },
            }
        }
        401 => ApplyError::Unauthorized {
            server: req.server.to_string(),
            message: status.message.clone(),
        },
        _ => rejected(status),
    }
}

fn rejected(status: &Status) -> ApplyError {
    ApplyError::Rejected {
        code: status.code,
        // Kubernetes reasons are one CamelCase word; kube fills in a sentence
        // of its own when the body was not a Status.
        reason: if status.reason.contains(' ') {
            String::new()
        } else {
            status.reason.clone()
        },
        // Multi-line messages (field lists) stay on one line.
        message: status
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The other managers and the contested fields of an apply conflict. The
/// API server writes `conflict with "M" …` (one) or `conflicts with "M":`
/// (several) in the message, and one `FieldManagerConflict` cause per
/// field with the manager in its message.
fn conflict_of(status: &Status) -> Option<(Vec<String>, Vec<String>)> {
    let manager = Regex::new(r#"conflicts? with "((?:[^"\\]|\\.)*)""#).ok()?;
    let causes = status.details.iter().flat_map(|d| &d.causes);
    let mut managers: Vec<String> = std::iter::once(status.message.as_str())
        .chain(causes.clone().map(|c| c.message.as_str()))
        .flat_map(|text| manager.captures_iter(text))
        .map(|c| c[1].replace("\\\"", "\""))
        .collect();
    managers.sort();
    managers.dedup();
    let fields: Vec<String> = causes
        .filter(|c| !c.field.is_empty())
        .map(|c| c.field.clone())
        .collect();
    (!managers.is_empty()).then_some((managers, fields))
}

/// `User "alice" cannot patch resource "ciliumnetworkpolicies" in API group
/// "cilium.io" in the namespace "payments"`: who and what, from the
/// message when it says, else from the request that was refused.
fn forbidden(status: &Status, req: &Attempt<'_>) -> ApplyError {
    let capture = |pattern: &str| {
        Regex::new(pattern)
            .ok()
            .and_then(|re| re.captures(&status.message))
            .map(|c| c[1].to_string())
    };
    let who = capture(r#"(User "[^"]*")"#);
    let verb = capture(r"cannot (\w+) resource").unwrap_or_else(|| req.verb.to_string());
    ApplyError::Forbidden {
        who: who.unwrap_or_else(|| "the kubeconfig's user".to_string()),
        verb,
        resource: format!("{}.cilium.io", req.plural),
        scope: req
            .namespace
            .map_or(Scope::Cluster, |ns| Scope::Namespace(ns.to_string())),
    }
}

/// `error: cause: cause`, without the repeats hyper's layers add.
pub fn cause_chain(err: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = next {
        // kube prefixes the variant name (`ServiceError: …`): not the user's concern.
        let text = e.to_string();
        let text = ["ServiceError: ", "HyperError: "]
            .iter()
            .find_map(|p| text.strip_prefix(p))
            .map_or(text.clone(), str::to_string);
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}
