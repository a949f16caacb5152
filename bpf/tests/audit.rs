//! Audit passes everything and records every would-drop, with identities.
mod common;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testing::privileged_tests_enabled;
use common::*;

#[test]
fn audit_passes_everything_and_records_would_drops_with_identities() {
    if !privileged_tests_enabled("audit_passes_everything_and_records_would_drops_with_identities")
    {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let lab = Lab::new();
    let mut dp = lab.datapath();
    let mut events = dp.events().unwrap();
    policy_b_ingress(dp.tables_mut());
    dp.tables_mut().set_mode(NS_A, Mode::Audit).unwrap();
    dp.tables_mut().set_mode(NS_B, Mode::Audit).unwrap();
    lab.tcp_echo_b(8080);
    lab.tcp_echo_b(9090);
    lab.udp_echo_b(5454);

    assert!(lab.tcp_roundtrip_a_to_b(8080));
    assert!(
        lab.tcp_roundtrip_a_to_b(9090),
        "audit must pass what enforce would drop"
    );
    assert!(
        lab.udp_roundtrip_a_to_b(5454),
        "audit must pass an explicitly denied flow too"
    );

    let flows = dp.tables().read_counters().unwrap();
    let c = counted(&flows, lab.ifindex_b, Direction::Ingress, 9090);
    assert_eq!(
        (c.verdict, c.reason),
        (verdict::WOULD_DROP, reason::DEFAULT_DENY)
    );
    assert_eq!((c.src_identity, c.dst_identity), (ID_A, ID_B));
    assert!(
        c.packets >= 4,
        "a would-drop connection keeps flowing: {c:?}"
    );
    let c = counted(&flows, lab.ifindex_b, Direction::Ingress, 5454);
    assert_eq!(
        (c.verdict, c.reason, c.rule_id),
        (verdict::WOULD_DROP, reason::DENY_RULE, 2)
    );
    assert_eq!(
        counted(&flows, lab.ifindex_b, Direction::Ingress, 8080).verdict,
        verdict::FORWARDED
    );
    // A's egress is not selected by any rule: forwarded there.
    assert_eq!(
        counted(&flows, lab.ifindex_a, Direction::Egress, 9090).verdict,
        verdict::FORWARDED
    );

    let evs = rt.block_on(async {
        let mut all = Vec::new();
        while let Ok(Ok(batch)) =
            tokio::time::timeout(std::time::Duration::from_millis(300), events.next_batch()).await
        {
            all.extend(batch);
        }
        all
    });
    let would_drop: Vec<_> = evs
        .iter()
        .filter(|e| e.verdict == verdict::WOULD_DROP)
        .collect();
    assert_eq!(
        would_drop
            .iter()
            .map(|e| e.dport)
            .collect::<std::collections::BTreeSet<_>>(),
        [5454, 9090].into(),
        "one would-drop event per denied connection: {would_drop:?}"
    );
    for e in &would_drop {
        assert_eq!(
            (e.src_identity, e.dst_identity, e.ns_id),
            (ID_A, ID_B, NS_B)
        );
        assert_eq!(e.ifindex, lab.ifindex_b);
        assert_eq!(e.saddr, u32::from(ADDR_A).to_be());
    }
    assert!(
        evs.iter().any(|e| e.verdict == verdict::FORWARDED
            && e.dport == 8080
            && e.ifindex == lab.ifindex_b),
        "new allowed connections are reported too"
    );
}
