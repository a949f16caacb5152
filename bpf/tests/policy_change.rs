//! New connections follow the policy as it is now, through every change of
//! the policy or subjects maps, also through a second handle on the pins;
//! existing connections keep the verdict of their first packet (conntrack).
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_bpf::Tables;
use common::*;

fn b_ingress_default_deny(t: &mut Tables, default_deny: bool) {
    let subjects = default_deny.then_some((
        SubjectKey {
            identity: ID_B,
            direction: Direction::Ingress as u32,
        },
        SubjectValue {
            flags: SUBJECT_F_DEFAULT_DENY,
        },
    ));
    t.replace_subjects(subjects).unwrap();
}

fn allow_8080(t: &mut Tables, allowed: bool) {
    let entry = allowed.then_some((
        PolicyKey {
            subject: ID_B,
            peer: ID_A,
            dport: 8080,
            proto: 6,
            direction: Direction::Ingress as u8,
        },
        PolicyValue {
            action: action::ALLOW,
            pad: 0,
            proxy_port: 0,
            rule_id: 1,
        },
    ));
    t.replace_policy(entry).unwrap();
}

#[test]
fn new_connections_follow_every_policy_and_subject_change() {
    if !privileged_tests_enabled("new_connections_follow_every_policy_and_subject_change") {
        return;
    }
    let lab = Lab::new();
    let mut dp = lab.datapath();
    let t = dp.tables_mut();
    allow_8080(t, true);
    b_ingress_default_deny(t, true);
    t.set_mode(NS_A, Mode::Enforce).unwrap();
    t.set_mode(NS_B, Mode::Enforce).unwrap();
    lab.tcp_echo_b(8080);
    assert!(lab.tcp_roundtrip_a_to_b(8080), "allowed");
    let mut open = tcp_connect(&lab.ns(&lab.pod_a), ADDR_B, 8080).expect("allowed again");
    assert!(echo_once(&mut open));

    allow_8080(dp.tables_mut(), false);
    assert!(
        !lab.tcp_roundtrip_a_to_b(8080),
        "the allow is gone: a new connection must be dropped"
    );
    assert!(
        echo_once(&mut open),
        "an established connection keeps its first packet's verdict"
    );

    b_ingress_default_deny(dp.tables_mut(), false);
    assert!(
        lab.tcp_roundtrip_a_to_b(8080),
        "B no longer selected on ingress: allowed without any rule"
    );

    b_ingress_default_deny(dp.tables_mut(), true);
    assert!(!lab.tcp_roundtrip_a_to_b(8080), "selected again: dropped");
    allow_8080(dp.tables_mut(), true);
    assert!(lab.tcp_roundtrip_a_to_b(8080), "allowed again");

    // A second handle on the pins, as a restarted agent has.
    let mut pinned = Tables::open_pinned(&lab.pin_dir).unwrap();
    allow_8080(&mut pinned, false);
    assert!(!lab.tcp_roundtrip_a_to_b(8080), "denied through the pins");
}
