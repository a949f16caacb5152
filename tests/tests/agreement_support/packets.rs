//! Sending one flow's packet from inside a netns and seeing whether it
//! arrived: TCP (connect, and data back for replies), UDP (receipt, and an
//! answer for replies), ICMP and SCTP (raw sockets).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cnpilot_bpf::netns;
use cnpilot_recommender::cases::{FlowProto, FlowSpec};

/// The sockets a case's flows are received at, made on first use, keyed
/// by the netns they live in.
#[derive(Default)]
pub struct Servers {
    tcp: HashMap<(PathBuf, Ipv4Addr, u16), TcpListener>,
    udp: HashMap<(PathBuf, Ipv4Addr, u16), UdpSocket>,
    raw: HashMap<(PathBuf, Ipv4Addr, u8), socket2::Socket>,
}

impl Servers {
    pub fn tcp(&mut self, ns: &Path, addr: Ipv4Addr, port: u16) -> &TcpListener {
        self.tcp
            .entry((ns.to_path_buf(), addr, port))
            .or_insert_with(|| {
                let l = netns::run_in(ns, || TcpListener::bind((addr, port)))
                    .unwrap()
                    .unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
    }

    pub fn udp(&mut self, ns: &Path, addr: Ipv4Addr, port: u16) -> &UdpSocket {
        self.udp
            .entry((ns.to_path_buf(), addr, port))
            .or_insert_with(|| {
                netns::run_in(ns, || UdpSocket::bind((addr, port)))
                    .unwrap()
                    .unwrap()
            })
    }

    /// A raw socket for `proto` at `addr`: it gets a copy of every such
    /// packet delivered there, whether or not the kernel speaks `proto`.
    pub fn raw(&mut self, ns: &Path, addr: Ipv4Addr, proto: u8) -> &socket2::Socket {
        self.raw
            .entry((ns.to_path_buf(), addr, proto))
            .or_insert_with(|| {
                netns::run_in(ns, || raw_socket(addr, proto))
                    .unwrap()
                    .unwrap()
            })
    }
}

fn raw_socket(addr: Ipv4Addr, proto: u8) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::IPV4,
        Type::RAW,
        Some(Protocol::from(i32::from(proto))),
    )?;
    s.bind(&SocketAddr::from((addr, 0)).into())?;
    Ok(s)
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP message of `icmp_type` (echo request by default) or an SCTP
/// common header to `port` (no chunk: only the datapath and a raw socket
/// look at it), ending in `nonce`.
fn raw_message(flow: &FlowSpec, nonce: [u8; 4]) -> Vec<u8> {
    let mut m = match flow.proto {
        FlowProto::Icmp => {
            let mut m = vec![flow.icmp_type.unwrap_or(8), 0, 0, 0];
            m.extend_from_slice(&nonce); // id and sequence
            m
        }
        _ => {
            let mut m = 40000u16.to_be_bytes().to_vec();
            m.extend_from_slice(&flow.port.unwrap_or(0).to_be_bytes());
            m.extend_from_slice(&[0; 8]); // verification tag, checksum
            m
        }
    };
    m.extend_from_slice(&nonce);
    if flow.proto == FlowProto::Icmp {
        let c = checksum(&m).to_be_bytes();
        m[2..4].copy_from_slice(&c);
    }
    m
}

/// A raw IPv4 packet from `from` (in `client_ns`): delivered when `server`
/// sees it arrive, from `from`, with the nonce.
pub fn raw_delivered(
    client_ns: &Path,
    from: Ipv4Addr,
    to: Ipv4Addr,
    flow: &FlowSpec,
    server: &socket2::Socket,
    wait: Duration,
) -> bool {
    use std::io::Read;
    static NONCE: AtomicU32 = AtomicU32::new(0x5eed_0000);
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst).to_be_bytes();
    let message = raw_message(flow, nonce);
    netns::run_in(client_ns, || -> std::io::Result<()> {
        let s = raw_socket(from, flow.proto.number())?;
        s.send_to(&message, &SocketAddr::from((to, 0)).into())?;
        Ok(())
    })
    .unwrap()
    .unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        server.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = (&*server).read(&mut buf) else {
            return false;
        };
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        if n >= ihl + message.len()
            && buf[12..16] == from.octets()
            && buf[ihl..ihl + message.len()] == message[..]
        {
            return true;
        }
    }
}

/// Accepts everything queued on `l` (so the backlog never fills up).
fn drain(l: &TcpListener) {
    while l.accept().is_ok() {}
}

/// A TCP connection from `from` (in `client_ns`) to `to`: delivered when
/// the handshake completes; for a reply flow the server must also get data
/// back to the client over it.
pub fn tcp_delivered(
    client_ns: &Path,
    from: Ipv4Addr,
    to: SocketAddr,
    listener: &TcpListener,
    reply: bool,
    wait: Duration,
) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::{Read, Write};
    let connected = netns::run_in(client_ns, || -> std::io::Result<TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::from((from, 0)).into())?;
        s.connect_timeout(&to.into(), wait)?;
        Ok(s.into())
    })
    .unwrap();
    let Ok(mut client) = connected else {
        drain(listener);
        return false;
    };
    let mut delivered = true;
    if reply {
        let local = client.local_addr().unwrap();
        let deadline = Instant::now() + wait;
        let accepted = loop {
            match listener.accept() {
                Ok((s, peer)) if peer == local => break Some(s),
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
                Err(_) => break None,
            }
        };
        delivered = accepted.is_some_and(|mut server| {
            server.set_nonblocking(false).unwrap();
            client.set_read_timeout(Some(wait)).unwrap();
            let mut buf = [0u8; 5];
            server.write_all(b"reply").is_ok()
                && client.read_exact(&mut buf).is_ok()
                && &buf == b"reply"
        });
    }
    drain(listener);
    delivered
}

/// A datagram from `from` (in `client_ns`) to `to`: delivered when `server`
/// receives it; for a reply flow the server's answer must reach the client.
pub fn udp_delivered(
    client_ns: &Path,
    from: Ipv4Addr,
    to: SocketAddr,
    server: &UdpSocket,
    reply: bool,
    wait: Duration,
) -> bool {
    static NONCE: AtomicU32 = AtomicU32::new(0);
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst).to_be_bytes();
    let client = netns::run_in(client_ns, || UdpSocket::bind((from, 0)))
        .unwrap()
        .unwrap();
    client.send_to(&nonce, to).unwrap();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16];
    let peer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        server.set_read_timeout(Some(left)).unwrap();
        match server.recv_from(&mut buf) {
            Ok((4, peer)) if buf[..4] == nonce => break peer,
            Ok(_) => {}
            Err(_) => return false,
        }
    };
    if !reply {
        return true;
    }
    server.send_to(&nonce, peer).unwrap();
    client.set_read_timeout(Some(wait)).unwrap();
    matches!(client.recv_from(&mut buf), Ok((4, _)) if buf[..4] == nonce)
}
