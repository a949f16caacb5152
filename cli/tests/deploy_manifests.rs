//! Every document of `deploy/*.yaml`, checked without a cluster: typed by
//! k8s-openapi (a field the typed struct drops is a field the API server
//! would not know either: a typo such as `hostNetwrk` that `kubectl apply`
//! would silently prune), then the invariants that tie the files together.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;

/// One typed document.
enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    DaemonSet(Box<DaemonSet>),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
}

struct Doc {
    /// `file: Kind namespace/name`, for messages.
    label: String,
    object: Object,
}

/// Parse every document of one YAML file into its typed object. Errors name
/// the file, the document's kind/name and the JSON path of each field the
/// typed struct did not keep.
fn parse_file(file: &str, text: &str) -> Result<Vec<Doc>, Vec<String>> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let yaml = match serde_yaml::Value::deserialize(de) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{file}: document {}: {e}", i + 1));
                // serde_yaml cannot resync after a syntax error: the rest of the
                // stream would repeat it forever.
                break;
            }
        };
        let json = match serde_json::to_value(&yaml) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{file}: document {}: not JSON-shaped: {e}", i + 1));
                continue;
            }
        };
        let kind = json["kind"].as_str().unwrap_or("<no kind>").to_string();
        let name = match (
            json["metadata"]["namespace"].as_str(),
            json["metadata"]["name"].as_str(),
        ) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.to_string(),
            (_, None) => "<no name>".to_string(),
        };
        let label = format!("{file}: {kind} {name}");
        let typed = match kind.as_str() {
            "Namespace" => roundtrip(&json).map(Object::Namespace),
            "ServiceAccount" => roundtrip(&json).map(Object::ServiceAccount),
            "DaemonSet" => roundtrip(&json).map(|d| Object::DaemonSet(Box::new(d))),
            "ClusterRole" => roundtrip(&json).map(Object::ClusterRole),
            "ClusterRoleBinding" => roundtrip(&json).map(Object::ClusterRoleBinding),
            other => Err(vec![format!(
                "no typed check for kind `{other}`: add it to deploy_manifests.rs"
            )]),
        };
        match typed {
            Ok(object) => docs.push(Doc { label, object }),
            Err(problems) => errors.extend(problems.into_iter().map(|p| format!("{label}: {p}"))),
        }
    }
    if errors.is_empty() {
        Ok(docs)
    } else {
        Err(errors)
    }
}

/// Deserialize into `T` (which checks apiVersion and kind), serialize back,
/// and list every path of the original that did not survive.
fn roundtrip<T: DeserializeOwned + Serialize>(json: &Value) -> Result<T, Vec<String>> {
    let typed: T = serde_json::from_value(json.clone()).map_err(|e| vec![e.to_string()])?;
    let back = serde_json::to_value(&typed).map_err(|e| vec![e.to_string()])?;
    let mut lost = Vec::new();
    dropped(json, &back, "", &mut lost);
    if lost.is_empty() {
        Ok(typed)
    } else {
        Err(lost)
    }
}

fn dropped(orig: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (orig, back) {
        (Value::Object(o), Value::Object(b)) => {
            for (key, value) in o {
                let path = if key.contains(['.', '/']) {
                    format!("{path}[\"{key}\"]")
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(kept) => dropped(value, kept, &path, out),
                    None => out.push(format!("unknown field {path}")),
                }
            }
        }
        (Value::Array(o), Value::Array(b)) => {
            for (i, value) in o.iter().enumerate() {
                let path = format!("{path}[{i}]");
                match b.get(i) {
                    Some(kept) => dropped(value, kept, &path, out),
                    None => out.push(format!("unknown entry {path}")),
                }
            }
        }
        (o, b) if o == b => {}
        (o, b) => out.push(format!("{path}: {o} was not kept (became {b})")),
    }
}

const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

/// The invariants across documents; one message per violation.
fn check_invariants(docs: &[Doc]) -> Vec<String> {
    let mut errors = Vec::new();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::Namespace(ns) => ns.metadata.name.as_deref(),
            _ => None,
        })
        .collect();
    let service_accounts: BTreeSet<(&str, &str)> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ServiceAccount(sa) => Some((
                sa.metadata.namespace.as_deref().unwrap_or(""),
                sa.metadata.name.as_deref().unwrap_or(""),
            )),
            _ => None,
        })
        .collect();
    let roles: BTreeMap<&str, &ClusterRole> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ClusterRole(r) => Some((r.metadata.name.as_deref().unwrap_or(""), r)),
            _ => None,
        })
        .collect();
    let bindings: Vec<(&str, &ClusterRoleBinding)> = docs
        .iter()
        .filter_map(|d| match &d.object {
            Object::ClusterRoleBinding(b) => Some((d.label.as_str(), b)),
            _ => None,
        })
        .collect();
    for (label, binding) in &bindings {
        if binding.role_ref.kind != "ClusterRole"
            || !roles.contains_key(binding.role_ref.name.as_str())
        {
            errors.push(format!(
                "{label}: roleRef {} {} is not in deploy/",
                binding.role_ref.kind, binding.role_ref.name
            ));
        }
    }

    for doc in docs {
        let label = &doc.label;
        let ns = match &doc.object {
            Object::ServiceAccount(sa) => sa.metadata.namespace.as_deref(),
            Object::DaemonSet(ds) => ds.metadata.namespace.as_deref(),
            _ => continue,
        };
        match ns {
            Some(ns) if namespaces.contains(ns) => {}
            other => errors.push(format!(
                "{label}: namespace {other:?} is not a Namespace in deploy/"
            )),
        }
        let Object::DaemonSet(ds) = &doc.object else {
            continue;
        };
        let ns = ns.unwrap_or("");
        let Some(pod) = ds.spec.template.spec.as_ref() else {
            errors.push(format!("{label}: no pod template spec"));
            continue;
        };
        match pod.service_account_name.as_deref() {
            Some(sa) if service_accounts.contains(&(ns, sa)) => {
                // The roles bound to the agent: read-only, and enough for
                // the inventory; never the apply role.
                let bound: Vec<&str> = bindings
                    .iter()
                    .filter(|(_, b)| {
                        b.subjects.iter().flatten().any(|s| {
                            s.kind == "ServiceAccount"
                                && s.name == sa
                                && s.namespace.as_deref() == Some(ns)
                        })
                    })
                    .map(|(_, b)| b.role_ref.name.as_str())
                    .collect();
                if bound.contains(&"cnpilot-apply") {
                    errors.push(format!(
                        "{label}: ServiceAccount {sa} is bound to cnpilot-apply (policy writes)"
                    ));
                }
                let mut readable = BTreeSet::new();
                for role in bound.iter().filter_map(|r| roles.get(r)) {
                    for rule in role.rules.iter().flatten() {
                        for verb in &rule.verbs {
                            if !READ_VERBS.contains(&verb.as_str()) {
                                errors.push(format!(
                                    "{label}: the agent's ClusterRole {} grants `{verb}` (only get/list/watch)",
                                    role.metadata.name.as_deref().unwrap_or("")
                                ));
                            }
                        }
                        if rule.verbs.iter().any(|v| v == "list")
                            && rule.verbs.iter().any(|v| v == "watch")
                        {
                            for group in rule.api_groups.iter().flatten() {
                                for resource in rule.resources.iter().flatten() {
                                    readable.insert((group.clone(), resource.clone()));
                                }
                            }
                        }
                    }
                }
                for resource in ["pods", "namespaces", "nodes"] {
                    if !readable.contains(&(String::new(), resource.to_string())) {
                        errors.push(format!(
                            "{label}: the agent cannot list+watch {resource} (its inventory needs them)"
                        ));
                    }
                }
            }
            other => errors.push(format!(
                "{label}: serviceAccountName {other:?} is not a ServiceAccount in {ns} in deploy/"
            )),
        }
        if pod.host_network != Some(true) {
            errors.push(format!(
                "{label}: hostNetwork must be true (the pods' veths are in the node's namespace)"
            ));
        }
        if pod.host_pid == Some(true) {
            errors.push(format!("{label}: hostPID must stay false"));
        }
        let volumes: BTreeSet<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        let containers = pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten());
        for c in containers {
            check_container(label, c, &volumes, &mut errors);
        }
        let agent = pod.containers.iter().find(|c| c.name == "agent");
        match agent.and_then(|c| c.env.iter().flatten().find(|e| e.name == "CNPILOT_NODE")) {
            Some(env)
                if env
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .is_some_and(|f| f.field_path == "spec.nodeName") => {}
            _ => errors.push(format!(
                "{label}: container agent: env CNPILOT_NODE must come from fieldRef spec.nodeName"
            )),
        }
    }
    errors
}

fn check_container(label: &str, c: &Container, volumes: &BTreeSet<&str>, errors: &mut Vec<String>) {
    let mounts: Vec<_> = c.volume_mounts.iter().flatten().collect();
    for m in &mounts {
        if !volumes.contains(m.name.as_str()) {
            errors.push(format!(
                "{label}: container {}: volumeMount {} names no volume",
                c.name, m.name
            ));
        }
        if m.mount_path == "/sys/fs/bpf" && m.mount_propagation.as_deref() != Some("Bidirectional")
        {
            errors.push(format!(
                "{label}: container {}: bpffs needs mountPropagation Bidirectional",
                c.name
            ));
        }
    }
    let defined: BTreeSet<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    let words: Vec<&str> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .map(String::as_str)
        .collect();
    for word in &words {
        for var in word.split("$(").skip(1).filter_map(|s| s.split(')').next()) {
            if !defined.contains(var) {
                errors.push(format!(
                    "{label}: container {}: $({var}) is not an env var of the container",
                    c.name
                ));
            }
        }
    }
    // Paths the agent writes must reach the host, or they die with the pod.
    for pair in words.windows(2) {
        if !matches!(
            pair[0],
            "--store" | "--pin-dir" | "--state-dir" | "--socket"
        ) {
            continue;
        }
        let path = Path::new(pair[1]);
        if !mounts.iter().any(|m| path.starts_with(&m.mount_path)) {
            errors.push(format!(
                "{label}: container {}: {} {} is not under a volumeMount",
                c.name, pair[0], pair[1]
            ));
        }
    }
    let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
    if c.name == "agent" && privileged != Some(true) {
        errors.push(format!("{label}: container agent must be privileged"));
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `deploy/*.yaml`, each file's name and text, sorted.
fn deploy_files() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = format!("deploy/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// Every problem of a set of files: parse errors, then invariants.
fn check_all(files: &[(String, String)]) -> Vec<String> {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in files {
        match parse_file(name, text) {
            Ok(d) => docs.extend(d),
            Err(e) => errors.extend(e),
        }
    }
    errors.extend(check_invariants(&docs));
    errors
}

/// The deploy files with one edit applied to `file`; the edit must match.
fn edited(file: &str, from: &str, to: &str) -> Vec<(String, String)> {
    let mut files = deploy_files();
    let (_, text) = files.iter_mut().find(|(n, _)| n == file).unwrap();
    assert!(text.contains(from), "{file} no longer contains {from:?}");
    *text = text.replacen(from, to, 1);
    files
}

#[test]
fn deploy_manifests_are_typed_and_consistent() {
    let files = deploy_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["deploy/daemonset.yaml", "deploy/rbac.yaml"]);
    let mut kinds = Vec::new();
    for (name, text) in &files {
        let docs = parse_file(name, text).unwrap_or_else(|e| panic!("{}", e.join("\n")));
        kinds.extend(docs.iter().map(|d| d.label.clone()));
    }
    assert_eq!(
        kinds,
        [
            "deploy/daemonset.yaml: Namespace cnpilot-system",
            "deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent",
            "deploy/rbac.yaml: ServiceAccount cnpilot-system/cnpilot",
            "deploy/rbac.yaml: ClusterRole cnpilot-agent",
            "deploy/rbac.yaml: ClusterRoleBinding cnpilot-agent",
            "deploy/rbac.yaml: ClusterRole cnpilot-apply",
        ]
    );
    let errors = check_all(&files);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn a_misspelled_field_is_named_with_file_object_and_path() {
    let text = "\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: cnpilot-agent, namespace: cnpilot-system}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: a}}
    spec:
      hostNetwrk: true
      containers:
      - name: agent
        image: cnpilot:0.1.0
        resources: {limits: {memory: 1Gi}, requets: {cpu: 100m}}
";
    let errors = parse_file("inline.yaml", text).err().unwrap();
    assert_eq!(
        errors,
        [
            "inline.yaml: DaemonSet cnpilot-system/cnpilot-agent: unknown field .spec.template.spec.containers[0].resources.requets",
            "inline.yaml: DaemonSet cnpilot-system/cnpilot-agent: unknown field .spec.template.spec.hostNetwrk",
        ]
    );
    // The same text without the typos is accepted: the errors are theirs.
    let fixed = text
        .replace("hostNetwrk", "hostNetwork")
        .replace("requets", "requests");
    assert_eq!(parse_file("inline.yaml", &fixed).err(), None::<Vec<String>>);
}

#[test]
fn a_wrong_kind_or_api_version_or_type_is_an_error() {
    let wrong_group = "apiVersion: extensions/v1beta1\nkind: DaemonSet\nmetadata: {name: x}\n";
    let errors = parse_file("a.yaml", wrong_group).err().unwrap();
    assert!(errors[0].starts_with("a.yaml: DaemonSet x: "), "{errors:?}");
    let unknown_kind = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n";
    let errors = parse_file("b.yaml", unknown_kind).err().unwrap();
    assert!(
        errors[0].contains("no typed check for kind `ConfigMap`"),
        "{errors:?}"
    );
    let wrong_type = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: [a]}\n";
    assert!(parse_file("c.yaml", wrong_type).is_err());
}

#[test]
fn a_mount_without_its_volume_fails() {
    let files = edited(
        "deploy/daemonset.yaml",
        "- name: run\n          hostPath:",
        "- name: runtime\n          hostPath:",
    );
    let errors = check_all(&files);
    assert_eq!(
        errors,
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: container agent: volumeMount run names no volume"]
    );
}

#[test]
fn a_write_verb_on_the_agent_role_fails() {
    let files = edited(
        "deploy/rbac.yaml",
        "verbs: [\"get\", \"list\", \"watch\"]",
        "verbs: [\"get\", \"list\", \"watch\", \"patch\"]",
    );
    let errors = check_all(&files);
    assert_eq!(
        errors,
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: the agent's ClusterRole cnpilot-agent grants `patch` (only get/list/watch)"]
    );
}

#[test]
fn binding_the_apply_role_to_the_agent_fails() {
    let files = edited(
        "deploy/rbac.yaml",
        "kind: ClusterRole\n  name: cnpilot-agent\nsubjects:",
        "kind: ClusterRole\n  name: cnpilot-apply\nsubjects:",
    );
    let errors = check_all(&files);
    assert!(
        errors.iter().any(
            |e| e.ends_with("ServiceAccount cnpilot is bound to cnpilot-apply (policy writes)")
        ),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.ends_with("the agent cannot list+watch pods (its inventory needs them)")),
        "{errors:?}"
    );
}

#[test]
fn the_node_name_must_come_from_spec_node_name() {
    let files = edited(
        "deploy/daemonset.yaml",
        "fieldPath: spec.nodeName",
        "fieldPath: metadata.name",
    );
    assert_eq!(
        check_all(&files),
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: container agent: env CNPILOT_NODE must come from fieldRef spec.nodeName"]
    );
}

#[test]
fn an_unknown_service_account_or_env_reference_or_unmounted_path_fails() {
    let files = edited(
        "deploy/daemonset.yaml",
        "serviceAccountName: cnpilot",
        "serviceAccountName: cnpilot-agent",
    );
    assert_eq!(
        check_all(&files),
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: serviceAccountName Some(\"cnpilot-agent\") is not a ServiceAccount in cnpilot-system in deploy/"]
    );
    let files = edited(
        "deploy/daemonset.yaml",
        "- $(CNPILOT_NODE)",
        "- $(NODE_NAME)",
    );
    assert_eq!(
        check_all(&files),
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: container agent: $(NODE_NAME) is not an env var of the container"]
    );
    let files = edited(
        "deploy/daemonset.yaml",
        "- /var/lib/cnpilot/store",
        "- /data/store",
    );
    assert_eq!(
        check_all(&files),
        ["deploy/daemonset.yaml: DaemonSet cnpilot-system/cnpilot-agent: container agent: --store /data/store is not under a volumeMount"]
    );
}
