//! Serialized policies validate against the CRD schemas and parse back to
//! the same model.

use cnpilot_recommender::cases::load_case_paths;
use cnpilot_recommender::model::{load_paths, load_str, CiliumPolicy, PolicyKind};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn schema(kind: PolicyKind) -> jsonschema::Validator {
    let file = match kind {
        PolicyKind::CiliumNetworkPolicy => "ciliumnetworkpolicy_v2.json",
        PolicyKind::CiliumClusterwideNetworkPolicy => "ciliumclusterwidenetworkpolicy_v2.json",
    };
    let text = std::fs::read_to_string(format!("{ROOT}/recommender/crds/{file}")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn all_policies() -> Vec<CiliumPolicy> {
    let mut out: Vec<CiliumPolicy> = load_paths(&[format!("{ROOT}/cli/policies/seed")])
        .unwrap()
        .policies
        .into_iter()
        .map(|p| p.policy)
        .collect();
    let cases = load_case_paths(&[
        format!("{ROOT}/recommender/seed-cases"),
        format!("{}/cases", env!("CARGO_MANIFEST_DIR")),
    ])
    .unwrap();
    for file in cases {
        for case in file.cases {
            out.extend(
                load_str(&case.policies, &case.id)
                    .unwrap()
                    .policies
                    .into_iter()
                    .map(|p| p.policy),
            );
        }
    }
    out
}

#[test]
fn serialized_policies_validate_against_the_crd_schemas() {
    let cnp = schema(PolicyKind::CiliumNetworkPolicy);
    let ccnp = schema(PolicyKind::CiliumClusterwideNetworkPolicy);
    let policies = all_policies();
    assert!(policies.len() > 50, "only {} policies", policies.len());
    for policy in policies {
        let yaml = serde_yaml::to_string(&policy).unwrap();
        let instance: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
        let validator = if policy.kind == PolicyKind::CiliumNetworkPolicy {
            &cnp
        } else {
            &ccnp
        };
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .filter(|e| {
                !schema_predates_extended_protocols(&instance, &e.instance_path().to_string())
            })
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} does not validate:\n{}\n---\n{yaml}",
            policy.metadata.name,
            errors.join("\n")
        );
        let again: CiliumPolicy = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(again, policy, "round trip changed {}", policy.metadata.name);
    }
}

/// The vendored CRD schemas list TCP, UDP, SCTP and ANY and require
/// `port`: they predate Cilium's VRRP and IGMP. An error about a `ports`
/// entry of those protocols is that gap, not a bug of the output.
fn schema_predates_extended_protocols(instance: &serde_json::Value, at: &str) -> bool {
    let entry = at.strip_suffix("/protocol").unwrap_or(at);
    at.contains("/ports/")
        && instance
            .pointer(entry)
            .and_then(|e| e.get("protocol"))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|p| p == "VRRP" || p == "IGMP")
}

#[test]
fn the_vendored_schemas_reject_vrrp_and_igmp() {
    // What a cluster whose CRDs predate extended protocols says about them:
    // the protocol is not in the enum, and an entry without `port` lacks a
    // required property. Written `port: "0"`, only the enum is in the way.
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: vrrp}
spec:
  nodeSelector: {}
  ingress:
  - fromEntities: [remote-node]
    toPorts:
    - ports:
      - {port: "0", protocol: VRRP}
      - {protocol: IGMP}
"#;
    let policy = &load_str(text, "vrrp.yaml").unwrap().policies[0].policy;
    let yaml = serde_yaml::to_string(policy).unwrap();
    let instance: serde_json::Value = serde_yaml::from_str(&yaml).unwrap();
    let ccnp = schema(PolicyKind::CiliumClusterwideNetworkPolicy);
    let mut errors: Vec<(String, String)> = ccnp
        .iter_errors(&instance)
        .map(|e| (e.instance_path().to_string(), e.to_string()))
        .collect();
    errors.sort();
    let at = "/spec/ingress/0/toPorts/0/ports";
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert_eq!(errors[0].0, format!("{at}/0/protocol"));
    assert!(errors[0].1.contains("VRRP"), "{errors:?}");
    assert_eq!(errors[1].0, format!("{at}/1"));
    assert!(errors[1].1.contains("port"), "{errors:?}");
    assert_eq!(errors[2].0, format!("{at}/1/protocol"));
    assert!(errors
        .iter()
        .all(|(path, _)| schema_predates_extended_protocols(&instance, path)));
    // The same filter lets nothing else through.
    assert!(!schema_predates_extended_protocols(
        &instance,
        "/spec/ingress/0/fromEntities/0"
    ));
}

#[test]
fn the_schema_check_catches_a_broken_document() {
    // Guards the test above against a validator that accepts everything.
    let cnp = schema(PolicyKind::CiliumNetworkPolicy);
    let bad = serde_json::json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "x"},
        "spec": {"endpointSelector": {}, "ingress": [{"fromEndpoint": [{}]}]}});
    assert!(!cnp.is_valid(&bad));
}

#[test]
fn unmodelled_fields_round_trip_and_validate() {
    let text = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: ns}
spec:
  endpointSelector: {}
  egress:
  - toFQDNs:
    - matchName: api.example.com
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
      serverNames: [api.example.com]
  - toServices:
    - k8sService: {serviceName: db, namespace: ns}
  - toEndpoints: [{}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {role: produce, topic: events}
    authentication: {mode: required}
"#;
    let set = load_str(text, "fqdn.yaml").unwrap();
    let names: Vec<&str> = set.warnings.iter().map(|w| w.message.as_str()).collect();
    for field in ["toServices", "kafka", "serverNames", "authentication"] {
        assert!(
            names.iter().any(|m| m.contains(field)),
            "no warning for {field}: {names:?}"
        );
    }
    // toFQDNs is modelled: the evaluator selects DNS answers' addresses.
    assert!(
        !names.iter().any(|m| m.contains("toFQDNs")),
        "toFQDNs is modelled: {names:?}"
    );
    let services = set
        .warnings
        .iter()
        .find(|w| w.message.contains("toServices"))
        .unwrap();
    assert_eq!(services.line, 13);
    let policy = &set.policies[0].policy;
    let instance: serde_json::Value =
        serde_yaml::from_str(&serde_yaml::to_string(policy).unwrap()).unwrap();
    assert!(schema(PolicyKind::CiliumNetworkPolicy).is_valid(&instance));
}
