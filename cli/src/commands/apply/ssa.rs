//! Server-side apply of loaded policies through a `kube::Client`: no
//! kubeconfig, no printing, so it runs against a mock service in tests.

use std::fmt;

use cnpilot_recommender::model::{CiliumPolicy, LoadedPolicy, PolicyKind};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::Client;
use serde_json::Value;

use super::errors::{classify, ApplyError, Attempt};

/// Who owns the fields `apply` sets, in `metadata.managedFields`.
pub const FIELD_MANAGER: &str = "cnpilot";

/// Metadata the API server sets. A policy exported from a cluster carries
/// them; sent back, `resourceVersion` would turn the apply into a
/// compare-and-swap against a stale version and `managedFields` is refused.
const SERVER_SET_METADATA: [&str; 8] = [
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// kubectl's client-side-apply record: meaningless to server-side apply,
/// and cnpilot would own (and freeze) a stale copy of it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `dryRun=All`: admitted and validated, not stored.
    pub dry_run: bool,
    /// `force=true`: take over fields other managers own.
    pub force_conflicts: bool,
}

/// What the apply did to the stored object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Created,
    Configured,
    Unchanged,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        }
    }
}

/// The object a policy becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: PolicyKind,
    /// `None` for a CiliumClusterwideNetworkPolicy.
    pub namespace: Option<String>,
    pub name: String,
}

impl Target {
    pub fn of(policy: &CiliumPolicy) -> Target {
        Target {
            kind: policy.kind,
            // The namespace the evaluator scoped the policy to (`default`
            // when the file has none), not the kubeconfig's: what was
            // reviewed is what gets applied.
            namespace: policy.scope_namespace().map(str::to_string),
            name: policy.metadata.name.clone(),
        }
    }

    fn plural(&self) -> &'static str {
        match self.kind {
            PolicyKind::CiliumNetworkPolicy => "ciliumnetworkpolicies",
            PolicyKind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicies",
        }
    }

    fn api(&self, client: &Client) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("cilium.io", "v2", self.kind.as_str());
        let resource = ApiResource::from_gvk_with_plural(&gvk, self.plural());
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        }
    }

    fn request<'a>(&'a self, verb: &'a str, server: &'a str) -> Attempt<'a> {
        Attempt {
            verb,
            kind: self.kind.as_str(),
            plural: self.plural(),
            namespace: self.namespace.as_deref(),
            server,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => write!(f, "{} (cluster-wide)", self.name),
        }
    }
}

/// One policy's outcome.
#[derive(Debug)]
pub struct Applied {
    pub target: Target,
    /// `file:line` of the policy.
    pub source: String,
    pub result: Result<Change, ApplyError>,
}

impl Applied {
    /// `applied payments/x (created)`, `would apply payments/x (created; dry
    /// run)`, or the reason it was not applied.
    pub fn line(&self, dry_run: bool) -> String {
        match (&self.result, dry_run) {
            (Ok(change), false) => format!("applied {} ({})", self.target, change.as_str()),
            (Ok(change), true) => {
                format!("would apply {} ({}; dry run)", self.target, change.as_str())
            }
            (Err(e), _) => format!("{}: {}: {e}", self.source, self.target),
        }
    }
}

/// The apply body: the policy as the loader parsed it, minus what the API
/// server owns, in the namespace it was evaluated in.
pub fn apply_body(policy: &CiliumPolicy) -> Result<Value, ApplyError> {
    let mut body = serde_json::to_value(policy)
        .map_err(|e| ApplyError::Other(format!("serializing the policy: {e}")))?;
    let Some(object) = body.as_object_mut() else {
        return Err(ApplyError::Other("the policy is not an object".into()));
    };
    // A status subresource: the main resource ignores it at best.
    object.remove("status");
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in SERVER_SET_METADATA {
            meta.remove(key);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            annotations.remove(LAST_APPLIED);
            if annotations.is_empty() {
                meta.remove("annotations");
            }
        }
        match Target::of(policy).namespace {
            Some(ns) => {
                meta.insert("namespace".into(), Value::String(ns));
            }
            None => {
                meta.remove("namespace");
            }
        }
    }
    Ok(body)
}

/// Apply one policy. A GET first tells created, configured and unchanged
/// apart (a dry run's answer cannot say by itself).
pub async fn apply_one(
    client: &Client,
    server: &str,
    policy: &CiliumPolicy,
    options: Options,
) -> Result<Change, ApplyError> {
    let target = Target::of(policy);
    let body = apply_body(policy)?;
    let api = target.api(client);
    let before = api
        .get_opt(&target.name)
        .await
        .map_err(|e| classify(e, &target.request("get", server)))?;
    let params = PatchParams {
        dry_run: options.dry_run,
        force: options.force_conflicts,
        field_manager: Some(FIELD_MANAGER.to_string()),
        // A field the cluster's CRD does not know must fail, not be
        // pruned: a rule that lost its `toPorts` allows every port.
        field_validation: Some(ValidationDirective::Strict),
    };
    let after = api
        .patch(&target.name, &params, &Patch::Apply(&body))
        .await
        .map_err(|e| classify(e, &target.request("patch", server)))?;
    tracing::debug!(policy = %target, "applied");
    Ok(match before {
        None => Change::Created,
        Some(before) if content(&before) == content(&after) => Change::Unchanged,
        Some(_) => Change::Configured,
    })
}

/// What a policy means: its rules, labels and annotations (not the
/// bookkeeping the server changes on every write).
fn content(object: &DynamicObject) -> [Option<Value>; 4] {
    let meta = &object.metadata;
    [
        object.data.get("spec").cloned(),
        object.data.get("specs").cloned(),
        meta.labels
            .as_ref()
            .and_then(|l| serde_json::to_value(l).ok()),
        meta.annotations
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok()),
    ]
}

/// Apply every policy, in order. An unreachable API server or credentials
/// that cannot be produced stop the run: the policies after it are not in
/// the result.
pub async fn apply_all(
    client: &Client,
    server: &str,
    policies: &[LoadedPolicy],
    options: Options,
) -> Vec<Applied> {
    let mut out = Vec::with_capacity(policies.len());
    for loaded in policies {
        let result = apply_one(client, server, &loaded.policy, options).await;
        // Both would fail every other policy the same way.
        let stop = matches!(
            result,
            Err(ApplyError::Unreachable { .. } | ApplyError::Auth { .. })
        );
        out.push(Applied {
            target: Target::of(&loaded.policy),
            source: format!("{}:{}", loaded.file, loaded.line),
            result,
        });
        if stop {
            break;
        }
    }
    out
}
