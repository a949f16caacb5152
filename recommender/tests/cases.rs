//! Every shared and project case file passes, flow by flow.

use cnpilot_recommender::cases::{load_case_paths, run_case};

fn run_all(path: &str) -> (usize, Vec<String>) {
    let files = load_case_paths(&[path]).unwrap();
    let mut total = 0;
    let mut failures = Vec::new();
    for file in &files {
        for case in &file.cases {
            for r in run_case(case, &file.file).unwrap() {
                total += 1;
                if !r.passed {
                    failures.push(format!(
                        "{} flow {} ({}): expected {:?}, got {:?}\n  {}",
                        r.case,
                        r.index,
                        r.flow,
                        r.expected,
                        r.got,
                        r.explanation.join("\n  ")
                    ));
                }
            }
        }
    }
    (total, failures)
}

#[test]
fn seed_cases_pass() {
    let (total, failures) = run_all(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/seed-cases/article.yaml"
    ));
    assert_eq!(total, 29);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn project_cases_pass() {
    let (total, failures) = run_all(concat!(env!("CARGO_MANIFEST_DIR"), "/cases"));
    assert!(total >= 150, "only {total} flows in recommender/cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_case_names_a_source() {
    let files = load_case_paths(&[concat!(env!("CARGO_MANIFEST_DIR"), "/cases")]).unwrap();
    for file in &files {
        for case in &file.cases {
            assert!(
                case.source.contains("https://") || case.source.contains("seed"),
                "{}: source must cite a doc URL",
                case.id
            );
        }
    }
}

#[test]
fn a_wrong_expectation_is_reported_with_its_rule() {
    let text = r#"
- id: wrong-on-purpose
  source: "self-test"
  endpoints:
    - {name: a, namespace: ns, labels: {app: a}}
    - {name: b, namespace: ns, labels: {app: b}}
  policies: |
    apiVersion: cilium.io/v2
    kind: CiliumNetworkPolicy
    metadata: {name: b-in, namespace: ns}
    spec:
      endpointSelector: {matchLabels: {app: b}}
      ingress:
      - fromEndpoints: [{matchLabels: {app: a}}]
  flows:
    - {from: a, to: b, proto: TCP, port: 80, expect: deny}
"#;
    let cases = cnpilot_recommender::cases::parse_cases(text, "inline.yaml").unwrap();
    let results = run_case(&cases[0], "inline.yaml").unwrap();
    assert!(!results[0].passed);
    let why = results[0].explanation.join("\n");
    assert!(
        why.contains("ns/b-in spec.ingress[0]") && why.contains("inline.yaml:8"),
        "{why}"
    );
}

#[test]
fn vrrp_and_igmp_flows_name_no_port() {
    let case = |flow: &str| {
        format!(
            r#"
- id: vrrp-flow
  source: "self-test"
  nodes:
    - {{name: n1, labels: {{role: lb}}}}
    - {{name: n2, labels: {{role: lb}}}}
  policies: |
    apiVersion: cilium.io/v2
    kind: CiliumClusterwideNetworkPolicy
    metadata: {{name: vrrp}}
    spec:
      nodeSelector: {{matchLabels: {{role: lb}}}}
      ingress:
      - toPorts: [{{ports: [{{protocol: VRRP}}]}}]
  flows:
    - {flow}
"#
        )
    };
    let run = |flow: &str| {
        let cases = cnpilot_recommender::cases::parse_cases(&case(flow), "inline.yaml").unwrap();
        run_case(&cases[0], "inline.yaml")
    };
    let ok = run("{from: n2, to: n1, proto: VRRP, expect: allow}").unwrap();
    assert!(ok[0].passed, "{:?}", ok[0]);
    assert_eq!(ok[0].flow, "n2 -> n1 VRRP");
    let igmp = run("{from: n2, to: n1, proto: IGMP, expect: deny}").unwrap();
    assert!(igmp[0].passed, "{:?}", igmp[0]);
    let err = run("{from: n2, to: n1, proto: VRRP, port: 112, expect: allow}").unwrap_err();
    assert!(
        err.to_string().contains("VRRP and IGMP have no ports"),
        "{err}"
    );
}
