//! A flood of new flows that overruns the ring buffer is still counted flow
//! by flow in the LRU map.
mod common;

use std::net::UdpSocket;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::netns;
use cnpilot_bpf::testing::privileged_tests_enabled;
use common::*;

const FLOWS: u16 = 20_000;
const FIRST_PORT: u16 = 20_000;

#[test]
fn a_flood_beyond_ring_buffer_capacity_is_fully_counted() {
    if !privileged_tests_enabled("a_flood_beyond_ring_buffer_capacity_is_fully_counted") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_runtime = rt.enter();
    let lab = Lab::new();
    let mut dp = lab.datapath();
    let mut events = dp.events().unwrap();
    dp.tables_mut().set_mode(NS_A, Mode::Audit).unwrap();
    dp.tables_mut().set_mode(NS_B, Mode::Audit).unwrap();

    let sent = netns::run_in(&lab.ns(&lab.pod_a), || {
        let s = UdpSocket::bind((ADDR_A, 0)).unwrap();
        let mut sent = 0u32;
        for i in 0..FLOWS {
            if s.send_to(b"x", (ADDR_B, FIRST_PORT + i)).is_ok() {
                sent += 1;
            }
            // Pace a little so the veth backlog (not cnpilot) drops nothing.
            if i % 200 == 199 {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        sent
    })
    .unwrap();
    assert_eq!(sent, u32::from(FLOWS));

    let flows = dp.tables().read_counters().unwrap();
    let counted_at = |ifindex: u32, dir: Direction| {
        flows
            .iter()
            .filter(|(k, _)| {
                k.ifindex == ifindex
                    && k.direction == dir as u8
                    && k.proto == 17
                    && (FIRST_PORT..FIRST_PORT + FLOWS).contains(&k.dport)
            })
            .count()
    };
    let delivered = events.drain().len();
    assert!(
        delivered < 2 * usize::from(FLOWS),
        "the ring buffer must have overrun for this test to mean anything ({delivered} events)"
    );
    assert_eq!(
        counted_at(lab.ifindex_a, Direction::Egress),
        usize::from(FLOWS),
        "every flow counted at A"
    );
    assert_eq!(
        counted_at(lab.ifindex_b, Direction::Ingress),
        usize::from(FLOWS),
        "every flow counted at B"
    );
}
