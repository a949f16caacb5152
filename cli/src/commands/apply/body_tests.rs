//! `cnpilot apply` without an API server: the body sent for a policy, the
//! kubeconfig handling and the checks made before anything is sent.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::ssa::apply_body;
use super::tests::{policies, CNP};

/// `cnpilot apply` end to end without a cluster: a kubeconfig file whose
/// server is a closed loopback port.
#[test]
fn run_reads_the_kubeconfig_and_its_context() {
    let dir = tempfile::tempdir().unwrap();
    let policies_dir = dir.path().join("proposed");
    std::fs::create_dir(&policies_dir).unwrap();
    std::fs::write(policies_dir.join("p.yaml"), CNP).unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1
kind: Config
clusters:
- name: loop
  cluster: {server: \"http://127.0.0.1:1\"}
users:
- name: u
  user: {token: t}
contexts:
- name: a
  context: {cluster: loop, user: u}
current-context: a
",
    )
    .unwrap();
    let args = |context: Option<&str>| super::ApplyArgs {
        dir: vec![policies_dir.clone()],
        dry_run: true,
        force_conflicts: false,
        context: context.map(str::to_string),
        kubeconfig: Some(kubeconfig.clone()),
    };
    let err = super::run(args(None)).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "1 of 1 policies not applied (reasons above)"
    );
    let err = super::run(args(Some("nope"))).unwrap_err();
    assert!(format!("{err:#}").contains("nope"), "{err:#}");
    // The server the messages name is the kubeconfig's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, server) = rt
        .block_on(super::connect(Some(&kubeconfig), Some("a")))
        .unwrap();
    assert_eq!(server, "http://127.0.0.1:1/");
}

#[test]
fn two_files_naming_one_policy_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), CNP).unwrap();
    std::fs::write(dir.path().join("b.yaml"), format!("# copy\n{CNP}")).unwrap();
    let err = super::run(super::ApplyArgs {
        dir: vec![dir.path().to_path_buf()],
        dry_run: true,
        force_conflicts: false,
        context: None,
        kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")),
    })
    .unwrap_err();
    let d = dir.path().display();
    assert_eq!(
        format!("{err:#}"),
        format!(
            "{d}/b.yaml:2: CiliumNetworkPolicy payments/cnpilot-payments-api is also defined at \
             {d}/a.yaml:1: keep one"
        )
    );
}

/// What the loader keeps is what the API server gets: every field of the
/// seed policies and of a policy using the unmodelled fields survives
/// `apply_body`, value for value.
#[test]
fn the_apply_body_keeps_every_field_of_the_file() {
    let seed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/seed");
    let mut texts: Vec<String> = std::fs::read_dir(&seed)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(texts.len(), 5);
    texts.push(RICH.to_string());
    let mut checked = 0;
    for text in &texts {
        let originals: Vec<Value> = serde_yaml::Deserializer::from_str(text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|v: &Value| !v.is_null())
            .collect();
        let loaded = policies(text);
        assert_eq!(loaded.len(), originals.len());
        for (original, policy) in originals.iter().zip(&loaded) {
            let body = apply_body(&policy.policy).unwrap();
            let mut lost = Vec::new();
            missing(original, &body, "", &mut lost);
            assert!(lost.is_empty(), "{}: {lost:?}", policy.policy.metadata.name);
            checked += 1;
        }
    }
    assert!(checked >= 6);
}

/// Paths of `a` that `b` lacks or holds another value at.
fn missing(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => missing(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                missing(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

const RICH: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: rich
  namespace: shop
  labels: {team: a}
  annotations: {note: kept}
specs:
- description: egress with the fields cnpilot does not evaluate
  endpointSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}
  enableDefaultDeny: {ingress: false, egress: true}
  labels: [{key: owner, value: shop, source: k8s}]
  egress:
  - toFQDNs: [{matchName: api.example.com}]
    toPorts: [{ports: [{port: \"443\", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
  - toEntities: [kube-apiserver]
  - toServices: [{k8sService: {serviceName: db, namespace: shop}}]
  egressDeny:
  - toCIDR: [192.0.2.0/24]
- endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
  ingressDeny:
  - fromEntities: [world]
    toPorts: [{ports: [{port: \"22\", protocol: TCP}]}]
";

/// A policy exported from a cluster (`kubectl get -o yaml`) applies as its
/// spec: the server's bookkeeping is not sent back, and a CNP without a
/// namespace goes to `default`, where it was evaluated.
#[test]
fn the_apply_body_drops_what_the_server_owns() {
    let exported = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: exported
  resourceVersion: \"12345\"
  uid: 0b7c1f0e-0000-4000-8000-000000000002
  generation: 3
  creationTimestamp: \"2026-01-02T10:00:00Z\"
  managedFields: [{manager: kubectl-client-side-apply, operation: Update}]
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{}'
  finalizers: [example.com/keep]
spec:
  endpointSelector: {}
  ingress: [{}]
status:
  derivativePolicies: {}
";
    let loaded = policies(exported);
    let body = apply_body(&loaded[0].policy).unwrap();
    assert_eq!(
        body,
        json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "exported", "namespace": "default", "finalizers": ["example.com/keep"]},
            "spec": {"endpointSelector": {}, "ingress": [{}]},
        })
    );
}

/// Credentials the kubeconfig cannot produce (a missing exec plugin) fail
/// before anything is sent, naming the server and the plugin's error.
#[test]
fn failing_credentials_are_named_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1
kind: Config
clusters:
- name: loop
  cluster: {server: \"http://127.0.0.1:1\"}
users:
- name: u
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: /nonexistent/cnpilot-test-plugin}
contexts:
- name: a
  context: {cluster: loop, user: u}
current-context: a
",
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt
        .block_on(super::connect(Some(&kubeconfig), None))
        .err()
        .unwrap();
    assert_eq!(
        format!("{err:#}"),
        "setting up a client for http://127.0.0.1:1/: auth error: unable to run auth exec: \
         No such file or directory (os error 2)"
    );
}
