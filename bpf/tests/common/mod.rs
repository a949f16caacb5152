//! A two-pod cluster in miniature for root tests: pod namespaces A and B,
//! each joined by a veth to a third "node" namespace that routes between them
//! with one /32 route per veth (as Cilium does; no bridge). cnpilot attaches
//! to the node-side veths. Everything is named uniquely per test and removed
//! by `Drop`, also when the test fails.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::{netns, Datapath};

// Each test binary uses a different subset.
use cnpilot_bpf::testbed::TwoPods;
#[allow(unused_imports)]
pub use cnpilot_bpf::testbed::{ADDR_A, ADDR_B, ID_A, ID_B, NS_A, NS_B};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The shared two-pod testbed, named uniquely per test.
pub struct Lab {
    pub tag: String,
    pods: TwoPods,
}

impl std::ops::Deref for Lab {
    type Target = TwoPods;
    fn deref(&self) -> &TwoPods {
        &self.pods
    }
}

pub fn sh(args: &[&str]) {
    if let Err(e) = cnpilot_bpf::testbed::sh(args) {
        panic!("{e}");
    }
}

impl Lab {
    pub fn new() -> Lab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{n:x}", std::process::id() & 0xfffff);
        let pods = TwoPods::build(
            &format!("cnpt-{tag}"),
            &format!("cnp{tag}"),
            PathBuf::from(format!("/sys/fs/bpf/cnpilot-test-{tag}")),
        )
        .unwrap();
        Lab { tag, pods }
    }

    pub fn ns(&self, name: &str) -> PathBuf {
        netns::named(name)
    }

    /// Loads (or re-opens) the datapath under this lab's pin dir, attaches to
    /// both veths and registers both pods (namespace `NS_A` / `NS_B`).
    pub fn datapath(&self) -> Datapath {
        let mut dp = Datapath::load_or_open(&self.pin_dir).unwrap();
        let node = self.ns(&self.node);
        dp.attach(Some(&node), &self.veth_a).unwrap();
        dp.attach(Some(&node), &self.veth_b).unwrap();
        self.register(dp.tables_mut()).unwrap();
        dp
    }

    /// A TCP listener in pod B that echoes what it reads.
    pub fn tcp_echo_b(&self, port: u16) {
        tcp_echo(&self.ns(&self.pod_b), ADDR_B, port);
    }

    /// Connects from pod A to B:port, sends a line and expects it back (so
    /// the replies passed too). `false` on timeout/refusal.
    pub fn tcp_roundtrip_a_to_b(&self, port: u16) -> bool {
        tcp_roundtrip(&self.ns(&self.pod_a), ADDR_B, port)
    }

    /// A UDP echo server in pod B.
    pub fn udp_echo_b(&self, port: u16) {
        let sock = netns::run_in(&self.ns(&self.pod_b), || UdpSocket::bind((ADDR_B, port)))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
    }

    pub fn udp_roundtrip_a_to_b(&self, port: u16) -> bool {
        netns::run_in(&self.ns(&self.pod_a), || {
            let s = UdpSocket::bind((ADDR_A, 0)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s.send_to(b"hello", (ADDR_B, port)).unwrap();
            let mut buf = [0u8; 16];
            matches!(s.recv_from(&mut buf), Ok((5, _)))
        })
        .unwrap()
    }
}

/// B's ingress: default deny; TCP 8080 and UDP 5353 from A allowed; UDP 5454
/// from anyone explicitly denied.
pub fn policy_b_ingress(t: &mut cnpilot_bpf::Tables) {
    let key = |peer, proto, dport| PolicyKey {
        subject: ID_B,
        peer,
        dport,
        proto,
        direction: Direction::Ingress as u8,
    };
    let allow = PolicyValue {
        action: action::ALLOW,
        pad: 0,
        proxy_port: 0,
        rule_id: 1,
    };
    let deny = PolicyValue {
        action: action::DENY,
        pad: 0,
        proxy_port: 0,
        rule_id: 2,
    };
    t.replace_policy([
        (key(ID_A, 6, 8080), allow),
        (key(ID_A, 17, 5353), allow),
        (key(identity::ANY, 17, 5454), deny),
    ])
    .unwrap();
    t.replace_subjects([(
        SubjectKey {
            identity: ID_B,
            direction: Direction::Ingress as u32,
        },
        SubjectValue {
            flags: SUBJECT_F_DEFAULT_DENY,
        },
    )])
    .unwrap();
}

/// A TCP echo server at `addr:port` in the namespace `ns`.
pub fn tcp_echo(ns: &Path, addr: Ipv4Addr, port: u16) {
    let listener = netns::run_in(ns, || TcpListener::bind((addr, port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Opens a TCP connection from namespace `ns` (kept open: its socket stays
/// in that namespace whichever thread uses it later).
pub fn tcp_connect(ns: &Path, to: Ipv4Addr, port: u16) -> Option<TcpStream> {
    netns::run_in(ns, || {
        let s =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_millis(700))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        Some(s)
    })
    .unwrap()
}

/// One line there and back on an open connection.
pub fn echo_once(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

pub fn tcp_roundtrip(ns: &Path, to: Ipv4Addr, port: u16) -> bool {
    tcp_connect(ns, to, port).is_some_and(|mut s| echo_once(&mut s))
}

/// The counters of the flow that `ifindex` saw first in `direction` to `dport`.
pub fn counted(
    flows: &[(FlowKey, FlowCounters)],
    ifindex: u32,
    direction: Direction,
    dport: u16,
) -> FlowCounters {
    flows
        .iter()
        .find(|(k, _)| k.ifindex == ifindex && k.dport == dport && k.direction == direction as u8)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| {
            panic!("no flow counted at ifindex {ifindex} {direction:?} dport {dport}: {flows:?}")
        })
}
