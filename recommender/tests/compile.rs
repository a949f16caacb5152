//! The compiled index holds exactly the datapath's keys.

use std::net::Ipv4Addr;

use cnpilot_bpf::maps::{
    action, identity, Direction, PolicyKey, SubjectKey, SUBJECT_F_DEFAULT_DENY,
};
use cnpilot_recommender::compile::CIDR_IDENTITY_BASE;
use cnpilot_recommender::{model, CompiledPolicy, IdentityInput, Outcome, Verdict};

fn pod(id: u32, app: &str) -> IdentityInput {
    IdentityInput {
        id,
        namespace: "ns".into(),
        labels: [("app".to_string(), app.to_string())].into(),
        ..Default::default()
    }
}

const POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: srv, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: srv}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: cli}}]
  - toPorts:
    - ports: [{port: "53"}]
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/ok"}]}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: cli}}]
    toPorts:
    - ports: [{port: "22", endPort: 23, protocol: TCP}]
  egress:
  - toCIDRSet:
    - cidr: 198.51.100.0/24
      except: [198.51.100.128/25]
"#;

fn compiled() -> CompiledPolicy {
    let set = model::load_str(POLICY, "p.yaml").unwrap();
    let mut c = CompiledPolicy::compile(
        &set,
        &[pod(256, "srv"), pod(257, "cli"), pod(258, "web")],
        None,
    );
    c.set_proxy_port(15001);
    c
}

fn key(peer: u32, dport: u16, proto: u8, dir: Direction) -> PolicyKey {
    PolicyKey {
        subject: 256,
        peer,
        dport,
        proto,
        direction: dir as u8,
    }
}

#[test]
fn entries_use_datapath_keys() {
    let c = compiled();
    let entries: std::collections::BTreeMap<_, _> = c.policy_entries().into_iter().collect();
    let ing = Direction::Ingress;
    // L3-only: proto 0, port 0.
    assert_eq!(entries[&key(257, 0, 0, ing)].action, action::ALLOW);
    // L4-only with protocol omitted: peer ANY, expanded to TCP, UDP, SCTP.
    for proto in [6, 17, 132] {
        assert_eq!(
            entries[&key(identity::ANY, 53, proto, ing)].action,
            action::ALLOW
        );
    }
    assert!(!entries.contains_key(&key(identity::ANY, 53, 1, ing)));
    // Deny range expanded port by port.
    assert_eq!(entries[&key(257, 22, 6, ing)].action, action::DENY);
    assert_eq!(entries[&key(257, 23, 6, ing)].action, action::DENY);
    assert!(!entries.contains_key(&key(257, 24, 6, ing)));
    // HTTP rules: redirect to the proxy.
    let l7 = entries[&key(258, 8080, 6, ing)];
    assert_eq!((l7.action, l7.proxy_port), (action::REDIRECT, 15001));
    let rule = c.rule(l7.rule_id).unwrap();
    assert_eq!(
        (rule.name.as_str(), rule.path.as_str(), rule.line),
        ("srv", "spec.ingress[2]", 2)
    );
    // allow-localhost for every local pod.
    assert_eq!(
        entries[&PolicyKey {
            subject: 257,
            peer: identity::HOST,
            dport: 0,
            proto: 0,
            direction: 0
        }]
            .action,
        action::ALLOW
    );
}

#[test]
fn subjects_and_ipcache() {
    let c = compiled();
    let subjects = c.subject_entries();
    let keys: Vec<SubjectKey> = subjects.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        vec![
            SubjectKey {
                identity: 256,
                direction: 0
            },
            SubjectKey {
                identity: 256,
                direction: 1
            }
        ]
    );
    assert!(subjects
        .iter()
        .all(|(_, v)| v.flags == SUBJECT_F_DEFAULT_DENY));
    let ipcache = c.ipcache_entries();
    assert_eq!(ipcache.len(), 2);
    let first = ipcache.iter().find(|(k, _)| k.prefixlen == 24).unwrap();
    assert_eq!(
        first.0.addr,
        u32::from(Ipv4Addr::new(198, 51, 100, 0)).to_be()
    );
    assert!(first.1.identity >= CIDR_IDENTITY_BASE);
    assert_eq!(
        c.identity_of_addr(Ipv4Addr::new(198, 51, 100, 7)),
        first.1.identity
    );
    assert_ne!(
        c.identity_of_addr(Ipv4Addr::new(198, 51, 100, 200)),
        first.1.identity
    );
    assert_eq!(
        c.identity_of_addr(Ipv4Addr::new(192, 0, 2, 1)),
        identity::WORLD
    );
}

#[test]
fn verdicts_name_their_rules() {
    let c = compiled();
    let d = c.verdict(257, 256, 6, 22, None);
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.ingress.outcome, Outcome::DenyRule);
    assert_eq!(
        c.rule(d.ingress.rule.unwrap()).unwrap().path,
        "spec.ingressDeny[0]"
    );
    let ok = c.verdict(257, 256, 6, 80, None);
    assert_eq!(
        (ok.verdict, ok.egress.outcome),
        (Verdict::Allow, Outcome::NoPolicy)
    );
    let get = cnpilot_recommender::HttpRequest {
        method: "GET".into(),
        path: "/ok".into(),
        ..Default::default()
    };
    let post = cnpilot_recommender::HttpRequest {
        method: "POST".into(),
        ..get.clone()
    };
    assert_eq!(
        c.verdict(258, 256, 6, 8080, Some(&get)).verdict,
        Verdict::Allow
    );
    assert_eq!(
        c.verdict(258, 256, 6, 8080, Some(&post)).verdict,
        Verdict::DenyL7
    );
    let world = c.verdict(256, identity::WORLD, 6, 443, None);
    assert_eq!(
        (world.verdict, world.egress.outcome),
        (Verdict::Deny, Outcome::DefaultDeny)
    );
    assert_eq!(c.selected_by(256, Direction::Egress).len(), 1);
}

/// A host policy on node `lb`: VRRP from remote nodes, IGMP to multicast,
/// a VRRP entry with a port name (allows nothing), IGMP denied from world.
const HOST_POLICY: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: lb}
spec:
  nodeSelector: {matchLabels: {role: lb}}
  ingress:
  - fromEntities: [remote-node]
    toPorts:
    - ports: [{port: "0", protocol: VRRP}]
  - fromEntities: [remote-node]
    toPorts:
    - ports: [{port: vrrp, protocol: VRRP}]
  ingressDeny:
  - fromEntities: [world]
    toPorts:
    - ports: [{protocol: IGMP}]
  egress:
  - toCIDR: [224.0.0.0/4]
    toPorts:
    - ports: [{protocol: IGMP}]
"#;

#[test]
fn vrrp_and_igmp_compile_to_the_datapath_key_of_a_port_less_packet() {
    let set = model::load_str(HOST_POLICY, "lb.yaml").unwrap();
    let node = cnpilot_recommender::compile::NodeInput {
        name: "n".into(),
        labels: [("role".to_string(), "lb".to_string())].into(),
    };
    let mut srv = pod(256, "srv");
    srv.named_ports.insert("vrrp".into(), 8112);
    let c = CompiledPolicy::compile(&set, &[srv], Some(&node));
    let host: Vec<PolicyKey> = c
        .policy_entries()
        .into_iter()
        .filter(|(k, _)| k.subject == identity::HOST)
        .map(|(k, _)| k)
        .collect();
    let multicast = c.identity_of_addr(Ipv4Addr::new(224, 0, 0, 22));
    assert!(multicast >= CIDR_IDENTITY_BASE);
    let at = |peer, proto, direction: Direction| PolicyKey {
        subject: identity::HOST,
        peer,
        dport: 0,
        proto,
        direction: direction as u8,
    };
    // The datapath's parse() leaves the port of a VRRP or IGMP packet at 0
    // and keys it (peer, 0, proto): exactly these entries, nothing for the
    // named port, whose number belongs to no VRRP packet.
    assert_eq!(
        host,
        vec![
            at(identity::WORLD, 2, Direction::Ingress),
            at(identity::REMOTE_NODE, 112, Direction::Ingress),
            // `world` covers the CIDR identities too.
            at(multicast, 2, Direction::Ingress),
            at(multicast, 2, Direction::Egress),
        ]
    );
    let entries: std::collections::BTreeMap<_, _> = c.policy_entries().into_iter().collect();
    assert_eq!(entries[&host[0]].action, action::DENY);
    assert_eq!(entries[&host[1]].action, action::ALLOW);
    // And the evaluator reads them as the datapath does.
    let vrrp = c.check(
        Direction::Ingress,
        identity::HOST,
        identity::REMOTE_NODE,
        112,
        0,
        None,
    );
    assert_eq!(vrrp.outcome, Outcome::Allowed);
    let tcp = c.check(
        Direction::Ingress,
        identity::HOST,
        identity::REMOTE_NODE,
        6,
        112,
        None,
    );
    assert_eq!(tcp.outcome, Outcome::DefaultDeny);
    let igmp = c.check(
        Direction::Ingress,
        identity::HOST,
        identity::WORLD,
        2,
        0,
        None,
    );
    assert_eq!(igmp.outcome, Outcome::DenyRule);
    let join = c.check(Direction::Egress, identity::HOST, multicast, 2, 0, None);
    assert_eq!(join.outcome, Outcome::Allowed);
}
