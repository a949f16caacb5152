//! `apply` against kube's documented mock: a tower-test service plays the
//! API server, so every request is checked and every answer is chosen.

use cnpilot_recommender::model::{self, LoadedPolicy};
use http::{Request, Response};
use kube::client::Body;
use serde_json::{json, Value};
use std::collections::BTreeMap;

use super::errors::ApplyError;
use super::ssa::{apply_all, apply_body, Applied, Change, Options};

const SERVER: &str = "https://api.test.example:6443/";

pub(super) const CNP: &str = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: cnpilot-payments-api
  namespace: payments
  labels: {app.kubernetes.io/managed-by: cnpilot}
  annotations: {cnpilot.io/evidence: \"3 flows\"}
spec:
  endpointSelector: {matchLabels: {app: payments-api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend-app, io.kubernetes.pod.namespace: web}}]
    toPorts:
    - ports: [{port: \"8080\", protocol: TCP}]
      rules:
        http: [{method: GET, path: /api/v1/charges}]
";

const CCNP: &str = "\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: default-deny-all}
spec:
  endpointSelector: {}
  ingress: [{}]
  egress: [{}]
";

pub(super) fn policies(text: &str) -> Vec<LoadedPolicy> {
    model::load_str(text, "p.yaml").unwrap().policies
}

/// One request as the mock API server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Value,
}

/// An answer: status code and body (JSON, or text as some servers send).
struct Reply(u16, String);

fn ok(body: &Value) -> Reply {
    Reply(200, body.to_string())
}

fn status(code: u16, reason: &str, message: &str, details: Value) -> Reply {
    Reply(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "details": details, "code": code,
        })
        .to_string(),
    )
}

fn not_found(name: &str) -> Reply {
    status(
        404,
        "NotFound",
        &format!("ciliumnetworkpolicies.cilium.io \"{name}\" not found"),
        json!({"name": name, "group": "cilium.io", "kind": "ciliumnetworkpolicies"}),
    )
}

/// The stored object the server answers with: the body, plus bookkeeping.
fn stored(body: &Value, resource_version: &str) -> Value {
    let mut object = body.clone();
    object["metadata"]["resourceVersion"] = json!(resource_version);
    object["metadata"]["uid"] = json!("0b7c1f0e-0000-4000-8000-000000000001");
    object["metadata"]["managedFields"] = json!([{"manager": "cnpilot", "operation": "Apply"}]);
    object
}

/// Run `apply_all` against a mock that answers `replies` in order; the
/// requests it saw, and the results.
async fn run(
    loaded: &[LoadedPolicy],
    options: Options,
    replies: Vec<Reply>,
) -> (Vec<Seen>, Vec<Applied>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        for Reply(code, body) in replies {
            let Some((request, send)) = handle.next_request().await else {
                break;
            };
            let (parts, request_body) = request.into_parts();
            let bytes = request_body.collect_bytes().await.unwrap();
            let query = parts
                .uri
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_string(), v.to_string())
                })
                .collect();
            seen.push(Seen {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query,
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            });
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(body.into_bytes()))
                    .unwrap(),
            );
        }
        seen
    });
    let results = apply_all(&client, SERVER, loaded, options).await;
    drop(client);
    (server.await.unwrap(), results)
}

const CNP_PATH: &str =
    "/apis/cilium.io/v2/namespaces/payments/ciliumnetworkpolicies/cnpilot-payments-api";

fn error_of(results: &[Applied]) -> &ApplyError {
    results[0].result.as_ref().err().unwrap()
}

#[tokio::test]
async fn a_new_cnp_is_created_with_server_side_apply() {
    let loaded = policies(CNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    let (seen, results) = run(
        &loaded,
        Options::default(),
        vec![not_found("cnpilot-payments-api"), ok(&stored(&body, "7"))],
    )
    .await;
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("GET", CNP_PATH)
    );
    let patch = &seen[1];
    assert_eq!(
        (patch.method.as_str(), patch.path.as_str()),
        ("PATCH", CNP_PATH)
    );
    assert_eq!(patch.content_type, "application/apply-patch+yaml");
    assert_eq!(
        patch.query,
        BTreeMap::from([
            ("fieldManager".to_string(), "cnpilot".to_string()),
            ("fieldValidation".to_string(), "Strict".to_string()),
        ])
    );
    let original: Value = serde_yaml::from_str(CNP).unwrap();
    assert_eq!(patch.body, serde_json::to_value(original).unwrap());
    assert_eq!(results[0].result.as_ref().unwrap(), &Change::Created);
    assert_eq!(
        results[0].line(false),
        "applied payments/cnpilot-payments-api (created)"
    );
}

#[tokio::test]
async fn an_existing_cnp_is_unchanged_or_configured() {
    let loaded = policies(CNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![ok(&stored(&body, "7")), ok(&stored(&body, "7"))],
    )
    .await;
    assert_eq!(results[0].result.as_ref().unwrap(), &Change::Unchanged);
    assert_eq!(
        results[0].line(false),
        "applied payments/cnpilot-payments-api (unchanged)"
    );

    let mut older = stored(&body, "6");
    older["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = json!("8081");
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![ok(&older), ok(&stored(&body, "7"))],
    )
    .await;
    assert_eq!(results[0].result.as_ref().unwrap(), &Change::Configured);
}

#[tokio::test]
async fn dry_run_and_force_are_in_the_query() {
    let loaded = policies(CNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    let options = Options {
        dry_run: true,
        force_conflicts: false,
    };
    let (seen, results) = run(
        &loaded,
        options,
        vec![not_found("cnpilot-payments-api"), ok(&stored(&body, "1"))],
    )
    .await;
    assert_eq!(seen[1].query.get("dryRun").map(String::as_str), Some("All"));
    assert_eq!(seen[1].query.get("force"), None);
    assert_eq!(
        results[0].line(true),
        "would apply payments/cnpilot-payments-api (created; dry run)"
    );

    let options = Options {
        dry_run: false,
        force_conflicts: true,
    };
    let (seen, _) = run(
        &loaded,
        options,
        vec![ok(&stored(&body, "1")), ok(&stored(&body, "2"))],
    )
    .await;
    assert_eq!(seen[1].query.get("force").map(String::as_str), Some("true"));
    assert_eq!(seen[1].query.get("dryRun"), None);
}

#[tokio::test]
async fn a_ccnp_is_cluster_scoped() {
    let loaded = policies(CCNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    assert_eq!(body["metadata"], json!({"name": "default-deny-all"}));
    let (seen, results) = run(
        &loaded,
        Options::default(),
        vec![not_found("default-deny-all"), ok(&stored(&body, "3"))],
    )
    .await;
    let path = "/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies/default-deny-all";
    assert_eq!(seen[0].path, path);
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("PATCH", path)
    );
    assert_eq!(seen[1].body["kind"], "CiliumClusterwideNetworkPolicy");
    assert_eq!(seen[1].body["spec"], body["spec"]);
    assert_eq!(
        results[0].line(false),
        "applied default-deny-all (cluster-wide) (created)"
    );
}

#[tokio::test]
async fn a_conflict_names_the_other_managers_and_fields() {
    let loaded = policies(CNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    let cause = |manager: &str, field: &str| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{manager}\" using cilium.io/v2"), "field": field});
    let conflict = status(
        409,
        "Conflict",
        "Apply failed with 2 conflicts: conflicts with \"kubectl-client-side-apply\" using cilium.io/v2:\n- .spec.endpointSelector\nconflicts with \"helm\" using cilium.io/v2:\n- .spec.ingress",
        json!({"causes": [
            cause("kubectl-client-side-apply", ".spec.endpointSelector"),
            cause("helm", ".spec.ingress"),
        ]}),
    );
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![ok(&stored(&body, "4")), conflict],
    )
    .await;
    assert!(matches!(error_of(&results), ApplyError::Conflict { .. }));
    assert_eq!(
        results[0].line(false),
        "p.yaml:1: payments/cnpilot-payments-api: conflict with field managers \"helm\", \
         \"kubectl-client-side-apply\" over .spec.endpointSelector, .spec.ingress: rerun with \
         --force-conflicts to take them over"
    );

    // One conflict, as the server words it, without causes.
    let single = status(
        409,
        "Conflict",
        "Apply failed with 1 conflict: conflict with \"kubectl\" using cilium.io/v2: .spec",
        json!({}),
    );
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![ok(&stored(&body, "4")), single],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        "conflict with field manager \"kubectl\": rerun with --force-conflicts to take them over"
    );
}

#[tokio::test]
async fn forbidden_names_the_verb_resource_and_the_role() {
    let loaded = policies(CNP);
    let body = apply_body(&loaded[0].policy).unwrap();
    let denied = status(
        403,
        "Forbidden",
        "ciliumnetworkpolicies.cilium.io \"cnpilot-payments-api\" is forbidden: User \"alice\" \
         cannot patch resource \"ciliumnetworkpolicies\" in API group \"cilium.io\" in the \
         namespace \"payments\"",
        json!({"name": "cnpilot-payments-api", "group": "cilium.io", "kind": "ciliumnetworkpolicies"}),
    );
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![ok(&stored(&body, "4")), denied],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        "forbidden: User \"alice\" cannot patch ciliumnetworkpolicies.cilium.io in namespace \
         payments: bind the `cnpilot-apply` ClusterRole of deploy/rbac.yaml to whoever runs \
         `cnpilot apply`"
    );

    // Refused already at the GET, with a message that does not say who.
    let loaded = policies(CCNP);
    let denied = status(403, "Forbidden", "forbidden", json!({}));
    let (seen, results) = run(&loaded, Options::default(), vec![denied]).await;
    assert_eq!(seen.len(), 1, "nothing is patched after a refused get");
    assert_eq!(
        error_of(&results).to_string(),
        "forbidden: the kubeconfig's user cannot get ciliumclusterwidenetworkpolicies.cilium.io \
         (cluster-wide): bind the `cnpilot-apply` ClusterRole of deploy/rbac.yaml to whoever \
         runs `cnpilot apply`"
    );
}

#[tokio::test]
async fn a_missing_crd_or_namespace_is_said_so() {
    let loaded = policies(CNP);
    // No CRD: the API server has no such path; some answer in plain text,
    // which kube does not take for an object not found: the GET says it.
    let (seen, results) = run(
        &loaded,
        Options::default(),
        vec![Reply(404, "404 page not found".into())],
    )
    .await;
    assert_eq!(seen.len(), 1);
    assert_eq!(
        error_of(&results).to_string(),
        "the cluster has no cilium.io/v2 CiliumNetworkPolicy CRD: is Cilium installed?"
    );
    let (_, results) = run(
        &policies(CCNP),
        Options::default(),
        vec![
            not_found("default-deny-all"),
            status(
                404,
                "NotFound",
                "the server could not find the requested resource",
                json!({}),
            ),
        ],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        "the cluster has no cilium.io/v2 CiliumClusterwideNetworkPolicy CRD: is Cilium installed?"
    );
    // The namespace is missing: the 404 names it.
    let (_, results) = run(
        &loaded,
        Options::default(),
        vec![
            not_found("cnpilot-payments-api"),
            status(
                404,
                "NotFound",
                "namespaces \"payments\" not found",
                json!({"name": "payments", "kind": "namespaces"}),
            ),
        ],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        "namespace payments does not exist"
    );
}

#[tokio::test]
async fn other_refusals_keep_the_servers_words_and_the_run_goes_on() {
    let mut loaded = policies(CNP);
    loaded.extend(policies(CCNP));
    let ccnp_body = apply_body(&loaded[1].policy).unwrap();
    let invalid = status(
        422,
        "Invalid",
        "CiliumNetworkPolicy.cilium.io \"cnpilot-payments-api\" is invalid: spec.ingress[0]: \
         Invalid value: \"object\":\nport out of range",
        json!({}),
    );
    let (seen, results) = run(
        &loaded,
        Options::default(),
        vec![
            not_found("cnpilot-payments-api"),
            invalid,
            not_found("default-deny-all"),
            ok(&stored(&ccnp_body, "9")),
        ],
    )
    .await;
    assert_eq!(seen.len(), 4, "the second policy is still applied");
    assert_eq!(
        error_of(&results).to_string(),
        "the API server refused it (422 Invalid): CiliumNetworkPolicy.cilium.io \
         \"cnpilot-payments-api\" is invalid: spec.ingress[0]: Invalid value: \"object\": port \
         out of range"
    );
    assert_eq!(results[1].result.as_ref().unwrap(), &Change::Created);

    // A proxy in front of the API server answering in plain text.
    let (_, results) = run(
        &policies(CNP),
        Options::default(),
        vec![Reply(502, "upstream connect error".into())],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        "the API server refused it (502): upstream connect error"
    );

    // A 401 names the server; an answer that is not an object is said so.
    let (_, results) = run(
        &policies(CNP),
        Options::default(),
        vec![status(401, "Unauthorized", "Unauthorized", json!({}))],
    )
    .await;
    assert_eq!(
        error_of(&results).to_string(),
        format!(
            "the API server at {SERVER} refused the credentials (401 Unauthorized): Unauthorized"
        )
    );
    let (_, results) = run(
        &policies(CNP),
        Options::default(),
        vec![
            not_found("cnpilot-payments-api"),
            Reply(200, "[1, 2]".into()),
        ],
    )
    .await;
    assert!(
        error_of(&results)
            .to_string()
            .starts_with("the API server's answer was not a CiliumNetworkPolicy: "),
        "{}",
        error_of(&results)
    );
}

/// A real client aimed at a closed loopback port: the connection is
/// refused, the message names the server, and nothing else is tried.
#[tokio::test]
async fn an_unreachable_server_is_named_and_stops_the_run() {
    let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).unwrap();
    let mut loaded = policies(CNP);
    loaded.extend(policies(CCNP));
    let results = apply_all(&client, &server, &loaded, Options::default()).await;
    assert_eq!(results.len(), 1, "the run stops at the first unreachable");
    let message = error_of(&results).to_string();
    assert!(
        message.starts_with("cannot reach the API server at http://127.0.0.1:1/: "),
        "{message}"
    );
    assert!(message.contains("Connection refused"), "{message}");
    assert!(!message.contains("ServiceError"), "{message}");
}
