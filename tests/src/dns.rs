//! A stub resolver for tests: one A query (over UDP or TCP) from inside a
//! network namespace, as a pod's resolver would send it, and what came back.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

/// What a server answered: its rcode and the A records of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: u8,
    pub ips: Vec<Ipv4Addr>,
}

pub const NOERROR: u8 = 0;
pub const REFUSED: u8 = 5;

/// Asks `server`:53 for the A records of `name` from inside `netns` (a
/// thread moves into it); `Err` when no answer came within 3 s.
pub fn query(netns: &str, server: Ipv4Addr, name: &str) -> Result<Answer, String> {
    let netns = cnpilot_bpf::netns::named(netns);
    let name = name.to_string();
    std::thread::spawn(move || -> Result<Answer, String> {
        cnpilot_bpf::netns::enter(&netns).map_err(|e| format!("setns: {e}"))?;
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        let id = (std::process::id() as u16).wrapping_mul(31);
        socket
            .send_to(&build(id, &name), SocketAddr::from((server, 53)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        let n = socket
            .recv(&mut buf)
            .map_err(|e| format!("no answer: {e}"))?;
        parse(&buf[..n], id)
    })
    .join()
    .map_err(|_| "the resolver thread panicked".to_string())?
}

/// The same over TCP (RFC 1035 4.2.2: a two-byte length before each
/// message), as a resolver retries a truncated answer; `Err` when the
/// connection failed or no answer came within 3 s.
pub fn query_tcp(netns: &str, server: Ipv4Addr, name: &str) -> Result<Answer, String> {
    let netns = cnpilot_bpf::netns::named(netns);
    let name = name.to_string();
    std::thread::spawn(move || -> Result<Answer, String> {
        cnpilot_bpf::netns::enter(&netns).map_err(|e| format!("setns: {e}"))?;
        let limit = Duration::from_secs(3);
        let mut stream = TcpStream::connect_timeout(&SocketAddr::from((server, 53)), limit)
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(limit))
            .map_err(|e| e.to_string())?;
        let id = (std::process::id() as u16).wrapping_mul(37);
        let query = build(id, &name);
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .map_err(|e| format!("no answer: {e}"))?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut msg)
            .map_err(|e| format!("short answer: {e}"))?;
        parse(&msg, id)
    })
    .join()
    .map_err(|_| "the resolver thread panicked".to_string())?
}

fn build(id: u16, name: &str) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0, 0, 1, 0, 1]);
    out
}

/// The answer's rcode and A records (names are skipped, not checked: the
/// test asks one name at a time).
fn parse(msg: &[u8], id: u16) -> Result<Answer, String> {
    let short = || format!("short answer: {msg:?}");
    if msg.len() < 12 || msg[0..2] != id.to_be_bytes() {
        return Err(format!("not the answer to query {id}: {msg:?}"));
    }
    let rcode = msg[3] & 0x0f;
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    let skip_name = |mut p: usize| -> Option<usize> {
        loop {
            let len = *msg.get(p)?;
            if len & 0xc0 == 0xc0 {
                return Some(p + 2);
            }
            if len == 0 {
                return Some(p + 1);
            }
            p += 1 + usize::from(len);
        }
    };
    for _ in 0..qd {
        pos = skip_name(pos).ok_or_else(short)? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        pos = skip_name(pos).ok_or_else(short)?;
        let rr = msg.get(pos..pos + 10).ok_or_else(short)?;
        let len = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let data = msg.get(pos + 10..pos + 10 + len).ok_or_else(short)?;
        if rr[0..2] == [0, 1] && len == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + len;
    }
    Ok(Answer { rcode, ips })
}
