//! cnpilot recommender: the Cilium policy model, its evaluator, and the
//! compiler to datapath entries. One truth, compiled once.
//!
//! Stages, as in Cilium's `pkg/policy`:
//! - [`model`]: `cilium.io/v2` CNP/CCNP types, a loader for files and
//!   directories (`file:line` errors, warnings for unmodelled fields).
//! - [`select`]: labels, label sources (`k8s:`, `any:`, `reserved:`) and
//!   selector matching with Cilium's namespace scoping.
//! - [`compile`]: [`CompiledPolicy::compile`] expands every rule into the
//!   keys of the datapath's policy map (`cnpilot_bpf::maps::PolicyKey`),
//!   default-deny subjects and ipcache prefixes; [`CompiledPolicy::verdict`]
//!   answers a flow with a few hash lookups and names the deciding rules.
//! - [`cases`]: the shared policy-case format and its runner.
//!
//! ```
//! use cnpilot_recommender::{model, CompiledPolicy, IdentityInput, Verdict};
//! let set = model::load_str(r#"
//! apiVersion: cilium.io/v2
//! kind: CiliumNetworkPolicy
//! metadata: {name: db, namespace: shop}
//! spec:
//!   endpointSelector: {matchLabels: {app: db}}
//!   ingress:
//!   - fromEndpoints: [{matchLabels: {app: web}}]
//!     toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
//! "#, "example.yaml").unwrap();
//! let pod = |id, app: &str| IdentityInput {
//!     id, namespace: "shop".into(),
//!     labels: [("app".to_string(), app.to_string())].into(), ..Default::default()
//! };
//! let compiled = CompiledPolicy::compile(&set, &[pod(256, "web"), pod(257, "db")], None);
//! assert_eq!(compiled.verdict(256, 257, 6, 5432, None).verdict, Verdict::Allow);
//! assert_eq!(compiled.verdict(256, 257, 6, 22, None).verdict, Verdict::Deny);
//! for (key, value) in compiled.policy_entries() {
//!     let _rule = compiled.rule(value.rule_id); // evidence for the entry
//!     let _ = key;
//! }
//! ```

pub mod cases;
pub mod compile;
pub mod model;
pub mod proof;
pub mod select;
pub mod synth;

pub use compile::{
    CompiledPolicy, Decision, FqdnInput, HttpRequest, IdentityInput, NodeInput, Outcome, RuleRef,
    Side, Verdict,
};
pub use model::{load_paths, load_str, PolicySet};
