//! Flipping one namespace is one map update: no reload, other namespaces
//! unchanged, and an audit-era "would drop" connection is cut at once.
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_bpf::Tables;
use common::*;

#[test]
fn flipping_one_namespace_needs_no_reload_and_leaves_others_alone() {
    if !privileged_tests_enabled("flipping_one_namespace_needs_no_reload_and_leaves_others_alone") {
        return;
    }
    let lab = Lab::new();
    let mut dp = lab.datapath();
    policy_b_ingress(dp.tables_mut());
    // A is default-deny on ingress with nothing allowed: B -> A depends only on A's mode.
    dp.tables_mut()
        .replace_subjects([
            (
                SubjectKey {
                    identity: ID_B,
                    direction: Direction::Ingress as u32,
                },
                SubjectValue {
                    flags: SUBJECT_F_DEFAULT_DENY,
                },
            ),
            (
                SubjectKey {
                    identity: ID_A,
                    direction: Direction::Ingress as u32,
                },
                SubjectValue {
                    flags: SUBJECT_F_DEFAULT_DENY,
                },
            ),
        ])
        .unwrap();
    dp.tables_mut().set_mode(NS_A, Mode::Audit).unwrap();
    dp.tables_mut().set_mode(NS_B, Mode::Audit).unwrap();
    lab.tcp_echo_b(8080);
    lab.tcp_echo_b(9090);
    tcp_echo(&lab.ns(&lab.pod_a), ADDR_A, 7070);

    let mut audit_era = tcp_connect(&lab.ns(&lab.pod_a), ADDR_B, 9090).expect("audit passes 9090");
    assert!(echo_once(&mut audit_era));
    assert!(
        tcp_roundtrip(&lab.ns(&lab.pod_b), ADDR_A, 7070),
        "A in audit passes B -> A"
    );

    // What `cnpilot mode` does: open the pinned map, one update.
    let mut pinned = Tables::open_pinned(&lab.pin_dir).unwrap();
    assert_eq!(pinned.set_mode(NS_B, Mode::Enforce).unwrap(), Mode::Audit);
    assert_eq!(pinned.mode(NS_A).unwrap(), Mode::Audit);
    assert_eq!(
        dp.tables().mode(NS_B).unwrap(),
        Mode::Enforce,
        "same map the loaded programs use"
    );

    assert!(
        !echo_once(&mut audit_era),
        "an audit-era would-drop connection must not bypass enforce"
    );
    assert!(
        !lab.tcp_roundtrip_a_to_b(9090),
        "new denied connections are dropped"
    );
    assert!(
        lab.tcp_roundtrip_a_to_b(8080),
        "allowed connections still pass"
    );
    assert!(
        tcp_roundtrip(&lab.ns(&lab.pod_b), ADDR_A, 7070),
        "A is still in audit"
    );

    let flows = dp.tables().read_counters().unwrap();
    assert_eq!(
        counted(&flows, lab.ifindex_b, Direction::Ingress, 9090).verdict,
        verdict::DROPPED
    );
    assert_eq!(
        counted(&flows, lab.ifindex_a, Direction::Ingress, 7070).verdict,
        verdict::WOULD_DROP
    );

    // And back: audit passes the same flow again, still without a reload.
    pinned.set_mode(NS_B, Mode::Audit).unwrap();
    assert!(lab.tcp_roundtrip_a_to_b(9090));
    // Off: no evaluation at all, nothing new counted.
    pinned.set_mode(NS_B, Mode::Off).unwrap();
    pinned.set_mode(NS_A, Mode::Off).unwrap();
    let before = dp.tables().read_counters().unwrap().len();
    assert!(lab.tcp_roundtrip_a_to_b(9090));
    assert_eq!(
        dp.tables().read_counters().unwrap().len(),
        before,
        "mode off evaluates and counts nothing"
    );
}
