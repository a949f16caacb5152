//! The agent going away leaves enforcement in place; a new one re-opens the
//! pinned maps (counters, modes, policy survive) and re-uses the links.
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testing::privileged_tests_enabled;
use common::*;

#[test]
fn enforcement_and_counters_survive_an_agent_restart() {
    if !privileged_tests_enabled("enforcement_and_counters_survive_an_agent_restart") {
        return;
    }
    let lab = Lab::new();
    lab.tcp_echo_b(8080);
    lab.tcp_echo_b(9090);
    let before = {
        let mut dp = lab.datapath();
        policy_b_ingress(dp.tables_mut());
        dp.tables_mut().set_mode(NS_B, Mode::Enforce).unwrap();
        assert!(lab.tcp_roundtrip_a_to_b(8080));
        assert!(!lab.tcp_roundtrip_a_to_b(9090));
        dp.tables().read_counters().unwrap()
    }; // the "agent" is gone: no process holds the programs or maps

    assert!(
        !lab.tcp_roundtrip_a_to_b(9090),
        "enforcement must hold with no agent running"
    );
    assert!(lab.tcp_roundtrip_a_to_b(8080));
    assert_eq!(cnpilot_bpf::attached_interfaces(&lab.pin_dir), {
        let mut v = vec![lab.veth_a.clone(), lab.veth_b.clone()];
        v.sort();
        v
    });

    let dp = lab.datapath(); // a new agent: re-opens pins, re-attaches in place
    assert_eq!(
        dp.tables().mode(NS_B).unwrap(),
        Mode::Enforce,
        "modes survive"
    );
    assert_eq!(dp.tables().policy_len(), 3, "policy survives");
    let after = dp.tables().read_counters().unwrap();
    for (key, old) in &before {
        let new = after
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, c)| c)
            .expect("every counted flow survives");
        assert!(new.packets >= old.packets && new.first_seen_ns == old.first_seen_ns);
    }
    assert!(
        !lab.tcp_roundtrip_a_to_b(9090),
        "still enforced after the restart"
    );
    assert!(lab.tcp_roundtrip_a_to_b(8080));
    let progs = cnpilot_bpf::tcx_programs(Some(&lab.ns(&lab.node)), &lab.veth_b).unwrap();
    assert_eq!(
        progs,
        vec![
            ("ingress", "cnp_from_pod".to_string()),
            ("egress", "cnp_to_pod".to_string())
        ],
        "re-attach replaced the programs in place, not stacked new ones"
    );
}
