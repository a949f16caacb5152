//! Just enough DNS (RFC 1035) for the lab: the kube-dns stand-in answers A
//! queries for the scenario's names, and the lab's clients ask it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::state::LabState;

pub const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_FORMERR: u8 = 1;
/// Short, so clients ask again and the datapath keeps seeing DNS flows.
pub const TTL_SECONDS: u32 = 5;

/// Names the responder knows: `W.NS`, `W.NS.svc`, `W.NS.svc.cluster.local`
/// for every workload, and the world hosts' names.
#[derive(Debug, Clone, Default)]
pub struct NameTable(BTreeMap<String, Vec<Ipv4Addr>>);

impl NameTable {
    pub fn from_lab(lab: &LabState) -> NameTable {
        let mut names: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for pod in &lab.pods {
            let short = format!("{}.{}", pod.workload, pod.namespace);
            for name in [
                format!("{short}.svc.cluster.local"),
                format!("{short}.svc"),
                short,
            ] {
                let ips = names.entry(name).or_default();
                if !ips.contains(&pod.ip) {
                    ips.push(pod.ip);
                }
            }
        }
        for host in &lab.scenario.world {
            if let Some(name) = &host.name {
                names
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .push(host.address);
            }
        }
        NameTable(names)
    }

    pub fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.0.get(&name).map(|v| v.as_slice())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub name: String,
    pub qtype: u16,
    flags: u16,
    /// The question section as sent, echoed in the answer.
    question: Vec<u8>,
}

/// Parses a query; `Err(Some(reply))` when a reply saying FORMERR can be sent.
pub fn parse_query(msg: &[u8]) -> Result<Query, Option<Vec<u8>>> {
    if msg.len() < 12 {
        return Err(None);
    }
    let id = u16::from_be_bytes([msg[0], msg[1]]);
    let flags = u16::from_be_bytes([msg[2], msg[3]]);
    let qdcount = u16::from_be_bytes([msg[4], msg[5]]);
    let formerr = || Some(header(id, flags, RCODE_FORMERR, 0, 0));
    if flags & 0x8000 != 0 {
        return Err(None);
    }
    if qdcount != 1 {
        return Err(formerr());
    }
    let (name, end) = read_name(msg, 12).ok_or_else(formerr)?;
    if end + 4 > msg.len() {
        return Err(formerr());
    }
    let qtype = u16::from_be_bytes([msg[end], msg[end + 1]]);
    Ok(Query {
        id,
        name,
        qtype,
        flags,
        question: msg[12..end + 4].to_vec(),
    })
}

/// The reply to a query: A records for a known name, an empty NOERROR for
/// other types of a known name (so AAAA lookups don't fail), else NXDOMAIN.
pub fn answer(q: &Query, names: &NameTable) -> Vec<u8> {
    let Some(ips) = names.lookup(&q.name) else {
        let mut out = header(q.id, q.flags, RCODE_NXDOMAIN, 1, 0);
        out.extend_from_slice(&q.question);
        return out;
    };
    let ips: &[Ipv4Addr] = if q.qtype == TYPE_A { ips } else { &[] };
    let mut out = header(q.id, q.flags, 0, 1, ips.len() as u16);
    out.extend_from_slice(&q.question);
    for ip in ips {
        // Name: a pointer to the question's name at offset 12.
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECONDS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    out
}

fn header(id: u16, query_flags: u16, rcode: u8, qd: u16, an: u16) -> Vec<u8> {
    // QR, AA, RA; the query's opcode and RD kept.
    let flags = 0x8000 | (query_flags & 0x7900) | 0x0400 | 0x0080 | u16::from(rcode & 0x0f);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for n in [qd, an, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    for n in [1u16, 0, 0, 0] {
        out.extend_from_slice(&n.to_be_bytes());
    }
    for label in name.trim_end_matches('.').split('.') {
        let bytes = &label.as_bytes()[..label.len().min(63)];
        out.push(bytes.len() as u8);
        out.extend_from_slice(bytes);
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out
}

/// The A records of a reply to query `id`.
pub fn parse_a_answers(msg: &[u8], id: u16) -> Result<Vec<Ipv4Addr>, String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("reply does not match the query".into());
    }
    let rcode = msg[3] & 0x0f;
    if rcode == RCODE_NXDOMAIN {
        return Err("NXDOMAIN".into());
    }
    if rcode != 0 {
        return Err(format!("rcode {rcode}"));
    }
    let qd = u16::from_be_bytes([msg[4], msg[5]]);
    let an = u16::from_be_bytes([msg[6], msg[7]]);
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(msg, pos).ok_or("truncated question")? + 4;
    }
    let mut ips = Vec::new();
    for _ in 0..an {
        pos = skip_name(msg, pos).ok_or("truncated answer")?;
        let rr = msg.get(pos..pos + 10).ok_or("truncated answer")?;
        let rtype = u16::from_be_bytes([rr[0], rr[1]]);
        let len = usize::from(u16::from_be_bytes([rr[8], rr[9]]));
        let data = msg
            .get(pos + 10..pos + 10 + len)
            .ok_or("truncated answer")?;
        if rtype == TYPE_A && len == 4 {
            ips.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        pos += 10 + len;
    }
    Ok(ips)
}

/// An uncompressed name (queries don't compress) and the offset after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            return Some((labels.join("."), pos + 1));
        }
        if len > 63 || labels.len() > 127 {
            return None;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).into_owned());
        pos += 1 + len;
    }
}

fn skip_name(msg: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *msg.get(pos)?;
        if len & 0xc0 == 0xc0 {
            return Some(pos + 2);
        }
        if len == 0 {
            return Some(pos + 1);
        }
        pos += 1 + usize::from(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NameTable {
        let mut t = BTreeMap::new();
        t.insert(
            "payments-api.payments.svc.cluster.local".to_string(),
            vec![Ipv4Addr::new(198, 18, 8, 10)],
        );
        NameTable(t)
    }

    #[test]
    fn answers_a_records_and_nxdomain() {
        let q = parse_query(&build_query(
            7,
            "Payments-API.payments.svc.cluster.local.",
            TYPE_A,
        ))
        .unwrap();
        let reply = answer(&q, &table());
        assert_eq!(
            parse_a_answers(&reply, 7).unwrap(),
            vec![Ipv4Addr::new(198, 18, 8, 10)]
        );
        let q = parse_query(&build_query(8, "nope.payments.svc.cluster.local", TYPE_A)).unwrap();
        assert_eq!(
            parse_a_answers(&answer(&q, &table()), 8).unwrap_err(),
            "NXDOMAIN"
        );
        let q = parse_query(&build_query(
            9,
            "payments-api.payments.svc.cluster.local",
            28,
        ))
        .unwrap();
        assert!(parse_a_answers(&answer(&q, &table()), 9)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn garbage_is_not_a_panic() {
        assert!(parse_query(&[1, 2, 3]).is_err());
        let mut bad = build_query(1, "a.b", TYPE_A);
        bad.truncate(15);
        assert!(parse_query(&bad).is_err());
        assert!(parse_a_answers(&[0; 5], 0).is_err());
    }
}
