//! Loader errors name the file, the line and what was expected.

use cnpilot_recommender::model::{load_paths, load_str, Diagnostic, LoadError};

fn errors(text: &str) -> Vec<Diagnostic> {
    match load_str(text, "in.yaml") {
        Err(LoadError::Invalid(d)) => d,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

fn one_error(text: &str) -> Diagnostic {
    let mut d = errors(text);
    assert_eq!(d.len(), 1, "{d:?}");
    d.remove(0)
}

const HEAD: &str = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  endpointSelector: {}\n";

#[test]
fn unknown_field_lists_valid_fields() {
    let d = one_error(&format!(
        "{HEAD}  ingress:\n  - fromEndpoint:\n    - {{}}\n"
    ));
    assert_eq!(d.line, 9);
    assert!(
        d.message.contains("unknown field `fromEndpoint`") && d.message.contains("`fromEndpoints`"),
        "{}",
        d.message
    );
    assert!(d.to_string().starts_with("in.yaml:9: "));
}

#[test]
fn typo_in_spec_is_an_error() {
    let d = one_error(&format!("{HEAD}  ingres:\n  - {{}}\n"));
    assert_eq!(d.line, 8);
    assert!(d.message.contains("`ingress`"), "{}", d.message);
}

#[test]
fn invalid_cidr_port_operator_and_regex() {
    let cidr = one_error(&format!(
        "{HEAD}  egress:\n  - toCIDR:\n    - 10.0.0.0/33\n"
    ));
    assert_eq!(cidr.line, 10);
    assert!(
        cidr.message.contains("invalid CIDR `10.0.0.0/33`"),
        "{}",
        cidr.message
    );
    let garbage = one_error(&format!(
        "{HEAD}  egress:\n  - toCIDRSet:\n    - cidr: not-an-ip\n"
    ));
    assert!(
        garbage.message.contains("invalid CIDR"),
        "{}",
        garbage.message
    );
    let port = one_error(&format!(
        "{HEAD}  egress:\n  - toPorts:\n    - ports:\n      - port: \"70000\"\n"
    ));
    assert_eq!(port.line, 11);
    assert!(port.message.contains("out of range"), "{}", port.message);
    let name = one_error(&format!(
        "{HEAD}  egress:\n  - toPorts:\n    - ports:\n      - port: \"http_api!\"\n"
    ));
    assert!(name.message.contains("invalid port"), "{}", name.message);
    let op = one_error("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector:\n    matchExpressions:\n    - {key: a, operator: Equals, values: [b]}\n  ingress: [{}]\n");
    assert_eq!(op.line, 7);
    assert!(
        op.message
            .contains("`In`, `NotIn`, `Exists`, `DoesNotExist`"),
        "{}",
        op.message
    );
    let values = one_error("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector:\n    matchExpressions:\n    - {key: a, operator: In}\n  ingress: [{}]\n");
    assert!(
        values.message.contains("non-empty `values`"),
        "{}",
        values.message
    );
    let re = one_error(&format!("{HEAD}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules:\n        http:\n        - path: \"/a([\"\n"));
    assert_eq!(re.line, 13);
    assert!(
        re.message.contains("invalid regular expression"),
        "{}",
        re.message
    );
}

#[test]
fn wrong_kind_and_version() {
    let kind =
        one_error("apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: {}\n");
    assert_eq!(kind.line, 2);
    assert!(
        kind.message.contains("CiliumClusterwideNetworkPolicy"),
        "{}",
        kind.message
    );
    let version = one_error(
        "apiVersion: networking.k8s.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\n",
    );
    assert!(
        version.message.contains("cilium.io/v2"),
        "{}",
        version.message
    );
}

#[test]
fn cross_field_checks_point_at_the_field() {
    let endport = one_error(&format!(
        "{HEAD}  egress:\n  - toPorts:\n    - ports:\n      - {{port: \"90\", endPort: 80}}\n"
    ));
    assert_eq!(endport.line, 11);
    assert!(
        endport.message.contains("endPort 80 is below port 90"),
        "{}",
        endport.message
    );
    let except = one_error(&format!(
        "{HEAD}  egress:\n  - toCIDRSet:\n    - cidr: 10.0.0.0/8\n      except: [192.0.2.0/24]\n"
    ));
    assert_eq!(except.line, 11);
    let l7deny = one_error(&format!("{HEAD}  ingressDeny:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n      rules: {{http: [{{method: GET}}]}}\n"));
    assert!(
        l7deny.message.contains("not allowed in deny rules"),
        "{}",
        l7deny.message
    );
    let node = one_error("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  nodeSelector: {}\n  ingress: [{}]\n");
    assert!(
        node.message
            .contains("only allowed in a CiliumClusterwideNetworkPolicy"),
        "{}",
        node.message
    );
    let nothing = one_error("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  endpointSelector: {}\n");
    assert!(
        nothing.message.contains("at least one of"),
        "{}",
        nothing.message
    );
}

#[test]
fn multi_document_lines_are_file_lines() {
    let text = format!("# comment\n---\n{HEAD}  ingress: [{{}}]\n---\n{HEAD}  egress:\n  - toCIDR: [300.1.1.1/8]\n---\n");
    let d = one_error(&text);
    assert_eq!(d.line, 20, "{d}");
}

#[test]
fn every_error_of_every_document_is_reported() {
    let text = format!("{HEAD}  ingres: []\n---\n{HEAD}  egres: []\n");
    let d = errors(&text);
    assert_eq!(d.iter().map(|d| d.line).collect::<Vec<_>>(), vec![8, 17]);
}

#[test]
fn directories_load_recursively_and_sorted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        format!("{HEAD}  ingress: [{{}}]\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("sub/a.yml"),
        format!("{HEAD}  egress: [{{}}]\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
    let set = load_paths(&[dir.path()]).unwrap();
    assert_eq!(set.policies.len(), 2);
    assert!(set.policies[0].file.ends_with("b.yaml"));
    let missing = load_paths(&[dir.path().join("nope.yaml")]).unwrap_err();
    assert!(matches!(missing, LoadError::Io { .. }));
}

#[test]
fn empty_documents_and_integer_ports_are_accepted() {
    let text = format!(
        "---\n# nothing\n---\n{HEAD}  ingress:\n  - toPorts:\n    - ports: [{{port: 8080}}]\n---\n"
    );
    let set = load_str(&text, "x.yaml").unwrap();
    assert_eq!(set.policies.len(), 1);
    assert_eq!(set.policies[0].line, 4);
}

#[test]
fn icmp_rules_are_checked_as_cilium_checks_them() {
    // Beside toPorts: Cilium's sanitizer refuses the rule.
    let d = one_error(&format!(
        "{HEAD}  ingress:\n  - toPorts:\n    - ports: [{{port: \"80\"}}]\n    icmps:\n    - fields: [{{type: 8}}]\n"
    ));
    assert!(d.message.contains("without `toPorts`"), "{}", d.message);
    assert_eq!(d.line, 11);
    // A name of the other family: named, with the family's valid names.
    let d = one_error(&format!(
        "{HEAD}  egress:\n  - icmps:\n    - fields:\n      - type: PacketTooBig\n"
    ));
    assert!(d.message.contains("not an IPv4 type name"), "{}", d.message);
    assert!(d.message.contains("EchoRequest"), "{}", d.message);
    assert_eq!(d.line, 11);
    // Out of range and unknown names fail while parsing, with the line.
    let d = one_error(&format!(
        "{HEAD}  egress:\n  - icmps:\n    - fields:\n      - type: 300\n"
    ));
    assert!(d.message.contains("0-255"), "{}", d.message);
    // And a valid one loads with no warning: icmps is evaluated.
    let set = load_str(
        &format!("{HEAD}  egress:\n  - icmps:\n    - fields:\n      - {{type: EchoRequest, family: IPv6}}\n      - type: 8\n"),
        "in.yaml",
    )
    .unwrap();
    assert!(set.warnings.is_empty(), "{:?}", set.warnings);
}

const HOST: &str = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: h\nspec:\n  nodeSelector: {}\n";

#[test]
fn vrrp_and_igmp_load_with_port_zero_or_none() {
    // Lines 7-11: the block and flow forms Cilium's docs and tests use.
    let text = format!(
        "{HOST}  ingress:\n  - fromEntities: [remote-node]\n    toPorts:\n    - ports:\n      - {{port: \"0\", protocol: VRRP}}\n      - protocol: IGMP\n"
    );
    let set = load_str(&text, "host.yaml").unwrap();
    let rule = set.policies[0].policy.spec.as_ref().unwrap();
    let ports = &rule.ingress.as_ref().unwrap()[0].to_ports.as_ref().unwrap()[0].ports;
    assert_eq!(
        ports[0].protocol,
        cnpilot_recommender::model::Protocol::Vrrp
    );
    assert!(!ports[0].port_omitted);
    assert!(ports[1].port_omitted);
    assert_eq!(ports[1].range(), Some((0, 0)));
    // One warning per document: the agent flag Cilium needs for them.
    assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    assert_eq!(set.warnings[0].line, 11);
    assert!(
        set.warnings[0]
            .message
            .contains("enable-extended-ip-protocols"),
        "{}",
        set.warnings[0].message
    );
    // Written back as written: "0" stays, a missing port stays missing.
    let yaml = serde_yaml::to_string(&set.policies[0].policy).unwrap();
    assert!(yaml.contains("port: '0'"), "{yaml}");
    assert!(yaml.matches("port:").count() == 1, "{yaml}");
    let again = load_str(&yaml, "again.yaml").unwrap();
    assert_eq!(again.policies[0].policy, set.policies[0].policy);
    // Cilium accepts them in endpoint policies too (its own test uses an
    // endpointSelector), and in deny rules.
    let cnp = format!("{HEAD}  egressDeny:\n  - toPorts:\n    - ports: [{{protocol: VRRP}}]\n");
    assert_eq!(load_str(&cnp, "cnp.yaml").unwrap().policies.len(), 1);
}

#[test]
fn vrrp_and_igmp_reject_a_port() {
    let d = one_error(&format!(
        "{HOST}  ingress:\n  - toPorts:\n    - ports:\n      - port: \"5\"\n      - {{port: \"443\", protocol: VRRP}}\n"
    ));
    assert_eq!(d.line, 11);
    assert_eq!(d.file, "in.yaml");
    assert!(
        d.message
            .starts_with("spec.ingress[0].toPorts[0].ports[1]: VRRP has no ports"),
        "{}",
        d.message
    );
    assert!(
        d.message.contains("`port: \"0\"` or no `port`, not 443"),
        "{}",
        d.message
    );
    let igmp = one_error(&format!(
        "{HOST}  egress:\n  - toPorts:\n    - ports: [{{port: \"2\", protocol: IGMP}}]\n"
    ));
    assert!(
        igmp.message.contains("IGMP has no ports"),
        "{}",
        igmp.message
    );
    assert_eq!(igmp.line, 9);
    // L7 rules need a real port, which VRRP never has.
    let l7 = one_error(&format!(
        "{HEAD}  ingress:\n  - toPorts:\n    - ports: [{{protocol: VRRP}}]\n      rules: {{http: [{{method: GET}}]}}\n"
    ));
    assert!(
        l7.message.contains("L7 rules need a specific port"),
        "{}",
        l7.message
    );
    // The CRD's enum is upper case, as the other protocols.
    let lower = one_error(&format!(
        "{HOST}  ingress:\n  - toPorts:\n    - ports: [{{port: \"0\", protocol: vrrp}}]\n"
    ));
    assert_eq!(lower.line, 9);
    assert!(
        lower.message.contains("`VRRP`") && lower.message.contains("`IGMP`"),
        "{}",
        lower.message
    );
}

#[test]
fn only_port_less_protocols_may_leave_the_port_out() {
    let tcp = one_error(&format!(
        "{HEAD}  ingress:\n  - toPorts:\n    - ports:\n      - protocol: TCP\n"
    ));
    assert_eq!(tcp.line, 10);
    assert!(
        tcp.message
            .contains("spec.ingress[0].toPorts[0].ports[0]: `port` missing: TCP needs one"),
        "{}",
        tcp.message
    );
    let any = one_error(&format!(
        "{HEAD}  ingress:\n  - toPorts:\n    - ports: [{{endPort: 90}}]\n"
    ));
    assert!(any.message.contains("ANY needs one"), "{}", any.message);
}

#[test]
fn a_named_port_on_vrrp_loads_with_a_warning() {
    let set = load_str(
        &format!("{HOST}  ingress:\n  - toPorts:\n    - ports:\n      - {{port: vrrp-peer, protocol: VRRP}}\n"),
        "in.yaml",
    )
    .unwrap();
    let never = set
        .warnings
        .iter()
        .find(|w| w.message.contains("never matches"))
        .unwrap_or_else(|| panic!("{:?}", set.warnings));
    assert_eq!(never.line, 10);
    assert!(
        never.message.contains("`vrrp-peer` on VRRP"),
        "{}",
        never.message
    );
}

#[test]
fn a_top_level_description_is_a_warning_with_its_line() {
    // As in Cilium's example policies: beside `spec`, where the API server
    // drops it. `spec.description` is part of the schema: no warning.
    let text = format!(
        "# example\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\ndescription: \"L3 rule\"\nmetadata:\n  name: p\n  namespace: ns\nspec:\n  description: kept\n  endpointSelector: {{}}\n  ingress: [{{}}]\n---\n{HEAD}  description: only here\n  ingress: [{{}}]\n"
    );
    let set = load_str(&text, "examples/l3.yaml").unwrap();
    assert_eq!(set.policies.len(), 2);
    assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    let w = &set.warnings[0];
    assert_eq!((w.file.as_str(), w.line), ("examples/l3.yaml", 5));
    assert!(
        w.message.contains("top-level `description`")
            && w.message.contains("CiliumNetworkPolicy schema"),
        "{}",
        w.message
    );
    assert!(w.to_string().starts_with("examples/l3.yaml:5: "), "{w}");
    // Never written back: the cluster would not keep it.
    let policy = &set.policies[0].policy;
    assert!(policy.description.is_some());
    let yaml = serde_yaml::to_string(policy).unwrap();
    assert!(!yaml.contains("L3 rule") && yaml.contains("kept"), "{yaml}");
    // Pretty-printed JSON: the least indented key is the top-level one.
    let json = "{\n  \"apiVersion\": \"cilium.io/v2\",\n  \"kind\": \"CiliumClusterwideNetworkPolicy\",\n  \"metadata\": {\"name\": \"c\"},\n  \"spec\": {\n    \"description\": \"in spec\",\n    \"nodeSelector\": {},\n    \"ingress\": [{}]\n  },\n  \"description\": {\"any\": \"value\"}\n}\n";
    let set = load_str(json, "c.json").unwrap();
    assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    assert_eq!(set.warnings[0].line, 10);
    assert!(set.warnings[0]
        .message
        .contains("CiliumClusterwideNetworkPolicy schema"));
}
