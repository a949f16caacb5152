//! The host <-> local pod path (`c/hostpath.h`): with the host's entry
//! written, a pod's veth judges connections with the node's address by the
//! host's policy too, each side's denial under its own mode, flips applying
//! to live connections; without it (host firewall off) only the pod's
//! policy does.
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testbed::GATEWAY;
use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_bpf::{HostPath, IpcacheEntry, Mode};
use common::*;

/// The node's `ns_mode` key here (no pod namespace uses it).
const HOST_NS: u32 = 0xFFFF_FF00;
const OPEN: u16 = 7101;
const CLOSED: u16 = 7102;

fn key(subject: u32, peer: u32, proto: u8, dport: u16, d: Direction) -> PolicyKey {
    PolicyKey {
        subject,
        peer,
        dport,
        proto,
        direction: d as u8,
    }
}

fn value(action: u8, rule_id: u32) -> PolicyValue {
    PolicyValue {
        action,
        pad: 0,
        proxy_port: 0,
        rule_id,
    }
}

fn default_deny(identity: u32, d: Direction) -> (SubjectKey, SubjectValue) {
    (
        SubjectKey {
            identity,
            direction: d as u32,
        },
        SubjectValue {
            flags: SUBJECT_F_DEFAULT_DENY,
        },
    )
}

/// The counters of the first flow counted at `ifindex` (the veth's
/// direction `d`) to `dport`.
fn at(dp: &cnpilot_bpf::Datapath, ifindex: u32, d: Direction, dport: u16) -> FlowCounters {
    counted(&dp.tables().read_counters().unwrap(), ifindex, d, dport)
}

#[test]
fn the_hosts_policy_judges_host_and_local_pod_connections_under_the_nodes_mode() {
    if !privileged_tests_enabled(
        "the_hosts_policy_judges_host_and_local_pod_connections_under_the_nodes_mode",
    ) {
        return;
    }
    let lab = Lab::new();
    let mut dp = lab.datapath();
    let t = dp.tables_mut();
    // Host firewall off: removing an entry that is not there is no error
    // (every agent without --host-firewall does it).
    t.set_host_path(None).unwrap();
    let mut ipcache = vec![IpcacheEntry {
        addr: GATEWAY,
        prefix_len: 32,
        value: IpcacheValue {
            identity: identity::HOST,
            flags: 0,
        },
    }];
    for (addr, id) in [(ADDR_A, ID_A), (ADDR_B, ID_B)] {
        ipcache.push(IpcacheEntry {
            addr,
            prefix_len: 32,
            value: IpcacheValue {
                identity: id,
                flags: IPCACHE_F_LOCAL_ENDPOINT,
            },
        });
    }
    t.set_ipcache(&ipcache).unwrap();
    // The host: ingress only from A on OPEN, egress only to B on 8080.
    // B admits the host on any port (the agent's allow-localhost). A's
    // egress allows the host on OPEN only.
    t.replace_policy([
        (
            key(identity::HOST, ID_A, 6, OPEN, Direction::Ingress),
            value(action::ALLOW, 11),
        ),
        (
            key(identity::HOST, ID_B, 6, 8080, Direction::Egress),
            value(action::ALLOW, 12),
        ),
        (
            key(ID_B, identity::HOST, 0, 0, Direction::Ingress),
            value(action::ALLOW, 13),
        ),
        (
            key(ID_A, identity::HOST, 6, OPEN, Direction::Egress),
            value(action::ALLOW, 14),
        ),
    ])
    .unwrap();
    t.replace_subjects([
        default_deny(identity::HOST, Direction::Ingress),
        default_deny(identity::HOST, Direction::Egress),
        default_deny(ID_B, Direction::Ingress),
        default_deny(ID_A, Direction::Egress),
    ])
    .unwrap();
    t.set_mode(NS_A, Mode::Audit).unwrap();
    t.set_mode(NS_B, Mode::Audit).unwrap();
    t.set_mode(HOST_NS, Mode::Audit).unwrap();
    t.set_host_path(Some(HostPath {
        identity: identity::HOST,
        ns_id: HOST_NS,
        addr: GATEWAY,
    }))
    .unwrap();
    let node = lab.ns(&lab.node);
    let pod_a = lab.ns(&lab.pod_a);
    tcp_echo(&node, GATEWAY, OPEN);
    tcp_echo(&node, GATEWAY, CLOSED);
    lab.tcp_echo_b(8080);
    lab.tcp_echo_b(9090);

    // Audit everywhere: everything passes; the host's own denial is marked
    // as the host's, a denial by both as the pod's with the host's too.
    assert!(tcp_roundtrip(&pod_a, GATEWAY, OPEN));
    let mut audit_era = tcp_connect(&pod_a, GATEWAY, CLOSED).expect("audit passes");
    assert!(echo_once(&mut audit_era));
    let c = at(&dp, lab.ifindex_a, Direction::Egress, CLOSED);
    assert_eq!(c.verdict, verdict::WOULD_DROP);
    assert_eq!(
        c.reason,
        reason::DEFAULT_DENY | reason::F_HOST_TOO,
        "A's egress and the host's ingress both deny it: the pod's reason, the host's bit"
    );
    assert!(tcp_roundtrip(&node, ADDR_B, 9090));
    let c = at(&dp, lab.ifindex_b, Direction::Ingress, 9090);
    assert_eq!(c.verdict, verdict::WOULD_DROP);
    assert_eq!(c.reason, reason::DEFAULT_DENY | reason::F_HOST);
    assert!(tcp_roundtrip(&node, ADDR_B, 8080));
    assert_eq!(
        at(&dp, lab.ifindex_b, Direction::Ingress, 8080).verdict,
        verdict::FORWARDED
    );

    // The node enforces; A and B stay in audit. The live audit-era
    // connection is cut at once; the host's denials drop.
    dp.tables_mut().set_mode(HOST_NS, Mode::Enforce).unwrap();
    assert!(
        !echo_once(&mut audit_era),
        "an audit-era connection the host denies must not outlive the node's enforce"
    );
    assert!(
        !tcp_roundtrip(&pod_a, GATEWAY, CLOSED),
        "the host's ingress"
    );
    assert!(tcp_roundtrip(&pod_a, GATEWAY, OPEN));
    assert!(!tcp_roundtrip(&node, ADDR_B, 9090), "the host's egress");
    assert!(tcp_roundtrip(&node, ADDR_B, 8080));

    // B's namespace off: the pod's side is not judged, the host's still is.
    dp.tables_mut().set_mode(NS_B, Mode::Off).unwrap();
    assert!(
        !tcp_roundtrip(&node, ADDR_B, 9090),
        "the node's mode, not B's"
    );
    assert!(tcp_roundtrip(&node, ADDR_B, 8080));

    // Host firewall off: the pods' policies alone.
    dp.tables_mut().set_host_path(None).unwrap();
    assert!(tcp_roundtrip(&node, ADDR_B, 9090));
    dp.tables_mut().set_mode(NS_B, Mode::Audit).unwrap();
    assert!(tcp_roundtrip(&pod_a, GATEWAY, CLOSED), "A is in audit");
}
