use super::*;

#[test]
fn seed_parses() {
    let s = Scenario::load("seed").unwrap();
    assert!(s.workload("payments", "payments-api").is_some());
    assert!(s.workload("kube-system", "kube-dns").is_some());
    assert!(s.workloads.iter().any(|w| w.host_network));
    let two = Scenario::load("two-nodes").unwrap();
    assert_eq!(two.nodes, 2);
}

#[test]
fn readme_example_parses() {
    let readme = include_str!("../../../scenarios/README.md");
    let yaml = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap();
    let s = Scenario::parse(yaml, "README.md").unwrap();
    assert_eq!(s.workloads[0].clients.len(), 4);
    assert_eq!(
        s.target("api.example:443").unwrap(),
        Target::Named {
            name: "api.example".into(),
            port: 443
        }
    );
}

#[test]
fn node_out_of_range_is_rejected() {
    let yaml = "name: x\nnamespaces:\n  - name: a\nworkloads:\n  - name: w\n    namespace: a\n    node: 3\n";
    let err = Scenario::parse(yaml, "n.yaml").unwrap_err().to_string();
    assert!(
        err.starts_with("n.yaml:7:") && err.contains("node 3"),
        "{err}"
    );
}

#[test]
fn unknown_field_reports_file_and_line() {
    let yaml = "name: x\nnamespaces:\n  - name: a\nworkloads:\n  - name: w\n    namespace: a\n    rplicas: 2\n";
    let err = Scenario::parse(yaml, "bad.yaml").unwrap_err().to_string();
    assert!(err.starts_with("bad.yaml:7:"), "{err}");
    assert!(err.contains("rplicas") && err.contains("replicas"), "{err}");
}

#[test]
fn unknown_target_reports_line() {
    let yaml = "name: x\nnamespaces:\n  - name: a\nworkloads:\n  - name: w\n    namespace: a\n    clients:\n      - target: nope.a:80\n        rate: 1\n";
    let err = Scenario::parse(yaml, "bad.yaml").unwrap_err().to_string();
    assert!(err.starts_with("bad.yaml:8:"), "{err}");
    assert!(err.contains("no workload `a/nope`"), "{err}");
}

#[test]
fn wrong_type_reports_line() {
    let yaml = "name: x\nnamespaces:\n  - name: a\nworkloads:\n  - name: w\n    namespace: a\n    replicas: many\n";
    let err = Scenario::parse(yaml, "f.yaml").unwrap_err().to_string();
    assert!(err.starts_with("f.yaml:7:"), "{err}");
}

#[test]
fn world_outside_range_is_rejected() {
    let yaml = "name: x\nnamespaces: []\nworkloads: []\nworld:\n  - address: 10.0.0.1\n";
    let err = Scenario::parse(yaml, "w.yaml").unwrap_err().to_string();
    assert!(
        err.contains("198.19.0.0/16") && err.starts_with("w.yaml:5"),
        "{err}"
    );
}

#[test]
fn targets() {
    assert_eq!(
        Target::parse("payments-api.payments:8080").unwrap(),
        Target::Workload {
            namespace: "payments".into(),
            workload: "payments-api".into(),
            port: 8080
        }
    );
    assert!(matches!(
        Target::parse("198.19.0.10:443").unwrap(),
        Target::World { port: 443, .. }
    ));
    assert_eq!(
        Target::parse("API.Processor.example:443").unwrap(),
        Target::Named {
            name: "api.processor.example".into(),
            port: 443
        }
    );
    assert!(Target::parse("a..b:443").is_err());
    assert!(Target::parse("app:80").is_err());
    assert!(Target::parse("app.a:x").is_err());
}
