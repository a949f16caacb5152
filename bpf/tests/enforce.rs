//! Enforce drops exactly the denied flows; replies of allowed ones pass.
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testing::privileged_tests_enabled;
use common::*;

#[test]
fn enforce_drops_exactly_the_denied_flows_and_replies_pass() {
    if !privileged_tests_enabled("enforce_drops_exactly_the_denied_flows_and_replies_pass") {
        return;
    }
    let lab = Lab::new();
    let mut dp = lab.datapath();
    policy_b_ingress(dp.tables_mut());
    dp.tables_mut().set_mode(NS_A, Mode::Enforce).unwrap();
    dp.tables_mut().set_mode(NS_B, Mode::Enforce).unwrap();
    lab.tcp_echo_b(8080);
    lab.tcp_echo_b(9090);
    lab.udp_echo_b(5353);
    lab.udp_echo_b(5454);

    assert!(
        lab.tcp_roundtrip_a_to_b(8080),
        "allowed TCP 8080 (with its replies) must pass"
    );
    assert!(
        !lab.tcp_roundtrip_a_to_b(9090),
        "TCP 9090 is not allowed: default deny must drop it"
    );
    assert!(
        lab.udp_roundtrip_a_to_b(5353),
        "allowed UDP 5353 (with its reply) must pass"
    );
    assert!(
        !lab.udp_roundtrip_a_to_b(5454),
        "UDP 5454 is explicitly denied"
    );

    let flows = dp.tables().read_counters().unwrap();
    let at_b = |dport: u16| {
        flows
            .iter()
            .find(|(k, _)| {
                k.ifindex == lab.ifindex_b
                    && k.dport == dport
                    && k.direction == Direction::Ingress as u8
            })
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no flow counted for dport {dport}: {flows:?}"))
    };
    assert_eq!(at_b(8080).verdict, verdict::FORWARDED);
    assert!(
        at_b(8080).packets >= 4,
        "the connection's packets, both ways, count on one flow"
    );
    assert_eq!(at_b(9090).verdict, verdict::DROPPED);
    assert_eq!(at_b(9090).reason, reason::DEFAULT_DENY);
    assert_eq!(
        (at_b(9090).src_identity, at_b(9090).dst_identity),
        (ID_A, ID_B)
    );
    assert_eq!(at_b(5454).verdict, verdict::DROPPED);
    assert_eq!(at_b(5454).reason, reason::DENY_RULE);
    assert_eq!(at_b(5454).rule_id, 2);
    assert_eq!(at_b(5353).verdict, verdict::FORWARDED);
}
