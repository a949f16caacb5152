//! DNS messages on the wire (RFC 1035 §4), read defensively: the proxy
//! parses what pods send and what servers answer, so every length is
//! checked, compression pointers may only point backwards (no loops), and
//! a name longer than 255 bytes is an error, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_REFUSED: u8 = 5;

const HEADER_LEN: usize = 12;
const MAX_NAME_LEN: usize = 255;
/// A CNAME chain longer than this is a loop or an attack, not an answer.
const MAX_CNAME_HOPS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message shorter than a DNS header ({0} bytes)")]
    Short(usize),
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("bad name at offset {0}")]
    BadName(usize),
    #[error("a query must have exactly one question, this has {0}")]
    Questions(u16),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// Lower-case, without the trailing dot; bytes outside `[!-~]` and
    /// dots inside a label are escaped as `\DDD`.
    pub name: String,
    pub qtype: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    Addr(IpAddr),
    Cname(String),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub rtype: u16,
    pub ttl: u32,
    pub data: RData,
}

/// A parsed message: the header fields the proxy needs, the question and
/// the answer section (authority and additional are not read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u16,
    pub flags: u16,
    pub question: Option<Question>,
    pub answers: Vec<Record>,
}

impl Message {
    pub fn is_response(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    /// The addresses the answer gives for its question's name, following
    /// CNAMEs, with every name of the chain (the question's first) and the
    /// smallest TTL on the way.
    pub fn resolved(&self) -> Resolved {
        let mut out = Resolved::default();
        let Some(q) = &self.question else {
            return out;
        };
        let mut names = vec![q.name.clone()];
        let mut ttl: Option<u32> = None;
        let mut current = q.name.clone();
        for _ in 0..MAX_CNAME_HOPS {
            let next = self.answers.iter().find_map(|r| match &r.data {
                RData::Cname(target) if r.name == current => Some((target.clone(), r.ttl)),
                _ => None,
            });
            let Some((target, cname_ttl)) = next else {
                break;
            };
            ttl = Some(ttl.map_or(cname_ttl, |t| t.min(cname_ttl)));
            if names.contains(&target) {
                break;
            }
            names.push(target.clone());
            current = target;
        }
        for r in &self.answers {
            if let RData::Addr(ip) = r.data {
                if names.contains(&r.name) && !out.ips.contains(&ip) {
                    out.ips.push(ip);
                    ttl = Some(ttl.map_or(r.ttl, |t| t.min(r.ttl)));
                }
            }
        }
        out.names = names;
        out.ttl = if out.ips.is_empty() {
            0
        } else {
            ttl.unwrap_or(0)
        };
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ttl: u32,
}

fn u16_at(msg: &[u8], pos: usize, what: &'static str) -> Result<u16, WireError> {
    msg.get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(WireError::Truncated(what))
}

/// Reads the name at `start`; returns it and the offset after it in the
/// message (after the first pointer, if it was compressed).
fn read_name(msg: &[u8], start: usize) -> Result<(String, usize), WireError> {
    let mut name = String::new();
    let mut wire_len = 0usize;
    let mut pos = start;
    let mut end = None;
    loop {
        let len = *msg.get(pos).ok_or(WireError::BadName(pos))?;
        match len & 0xc0 {
            0xc0 => {
                let lo = *msg.get(pos + 1).ok_or(WireError::BadName(pos))?;
                let target = usize::from(len & 0x3f) << 8 | usize::from(lo);
                end.get_or_insert(pos + 2);
                // Backwards only: every jump shrinks `pos`, so a chain of
                // pointers ends.
                if target >= pos {
                    return Err(WireError::BadName(pos));
                }
                pos = target;
            }
            0x00 => {
                if len == 0 {
                    let after = end.unwrap_or(pos + 1);
                    return Ok((name, after));
                }
                let label = msg
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(WireError::BadName(pos))?;
                wire_len += 1 + label.len();
                if wire_len > MAX_NAME_LEN {
                    return Err(WireError::BadName(start));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                for &b in label {
                    match b.to_ascii_lowercase() {
                        b'.' | b'\\' => name.push_str(&format!("\\{b:03}")),
                        c @ b'!'..=b'~' => name.push(char::from(c)),
                        c => name.push_str(&format!("\\{c:03}")),
                    }
                }
                pos += 1 + label.len();
            }
            // 0x40 and 0x80: extended label types nobody uses (RFC 6891).
            _ => return Err(WireError::BadName(pos)),
        }
    }
}

/// Parses a query or a response.
pub fn parse(msg: &[u8]) -> Result<Message, WireError> {
    if msg.len() < HEADER_LEN {
        return Err(WireError::Short(msg.len()));
    }
    let id = u16_at(msg, 0, "header")?;
    let flags = u16_at(msg, 2, "header")?;
    let qdcount = u16_at(msg, 4, "header")?;
    let ancount = u16_at(msg, 6, "header")?;
    if qdcount > 1 {
        return Err(WireError::Questions(qdcount));
    }
    let mut pos = HEADER_LEN;
    let question = if qdcount == 1 {
        let (name, after) = read_name(msg, pos)?;
        let qtype = u16_at(msg, after, "question")?;
        u16_at(msg, after + 2, "question")?;
        pos = after + 4;
        Some(Question { name, qtype })
    } else {
        None
    };
    let mut answers = Vec::new();
    for _ in 0..ancount {
        let (name, after) = read_name(msg, pos)?;
        let rtype = u16_at(msg, after, "answer")?;
        let ttl_hi = u16_at(msg, after + 4, "answer")?;
        let ttl_lo = u16_at(msg, after + 6, "answer")?;
        let rdlen = usize::from(u16_at(msg, after + 8, "answer")?);
        let rdata_at = after + 10;
        let rdata = msg
            .get(rdata_at..rdata_at + rdlen)
            .ok_or(WireError::Truncated("answer data"))?;
        let data = match (rtype, rdlen) {
            (TYPE_A, 4) => RData::Addr(IpAddr::V4(Ipv4Addr::new(
                rdata[0], rdata[1], rdata[2], rdata[3],
            ))),
            (TYPE_AAAA, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(rdata);
                RData::Addr(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            (TYPE_CNAME, _) => RData::Cname(read_name(msg, rdata_at)?.0),
            _ => RData::Other,
        };
        // RFC 2181 §8: a TTL with the top bit set is read as zero.
        let ttl = (u32::from(ttl_hi) << 16 | u32::from(ttl_lo)) & 0x7fff_ffff;
        answers.push(Record {
            name,
            rtype,
            ttl,
            data,
        });
        pos = rdata_at + rdlen;
    }
    Ok(Message {
        id,
        flags,
        question,
        answers,
    })
}

/// The answer a server gives a query it will not serve: the query's header
/// and question back, QR set, no records, `rcode`. `None` when not even
/// the header and question can be read (then nothing is sent, as a server
/// would do with garbage).
pub fn error_reply(query: &[u8], rcode: u8) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN {
        return None;
    }
    let flags = u16_at(query, 2, "header").ok()?;
    let qdcount = u16_at(query, 4, "header").ok()?;
    let question_end = if qdcount == 1 {
        read_name(query, HEADER_LEN).ok()?.1 + 4
    } else {
        HEADER_LEN
    };
    let question = query.get(HEADER_LEN..question_end)?;
    // QR, RA; the query's opcode and RD kept.
    let reply_flags = 0x8000 | (flags & 0x7900) | 0x0080 | u16::from(rcode & 0x0f);
    let mut out = Vec::with_capacity(question_end);
    out.extend_from_slice(&query[0..2]);
    out.extend_from_slice(&reply_flags.to_be_bytes());
    out.extend_from_slice(&qdcount.min(1).to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(question);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_bytes(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name.split('.') {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut out = id.to_be_bytes().to_vec();
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&name_bytes(name));
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out
    }

    /// www.example.test CNAME edge.example.test (ttl 300), edge A x2 (ttl 30, 60).
    fn cname_response() -> Vec<u8> {
        let mut out = query(9, "www.example.test", TYPE_A);
        out[2] = 0x81;
        out[3] = 0x80;
        out[7] = 3;
        // CNAME: owner = pointer to the question name (offset 12).
        out.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 1, 44]);
        let target_at = out.len() + 2;
        let target = {
            let mut t = vec![4];
            t.extend_from_slice(b"edge");
            // "example.test" of the question: offset 12 + 1 + 3.
            t.extend_from_slice(&[0xc0, 16]);
            t
        };
        out.extend_from_slice(&(target.len() as u16).to_be_bytes());
        out.extend_from_slice(&target);
        for (ttl, last) in [(30u32, 10u8), (60, 11)] {
            out.extend_from_slice(&[0xc0, target_at as u8, 0, 1, 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, 4, 198, 19, 50, last]);
        }
        out
    }

    #[test]
    fn a_query_parses() {
        let m = parse(&query(7, "API.Processor.example", TYPE_A)).unwrap();
        assert!(!m.is_response());
        assert_eq!(
            m.question,
            Some(Question {
                name: "api.processor.example".into(),
                qtype: TYPE_A
            })
        );
    }

    #[test]
    fn cname_chains_are_followed_with_the_smallest_ttl() {
        let m = parse(&cname_response()).unwrap();
        assert!(m.is_response());
        assert_eq!(m.rcode(), 0);
        let r = m.resolved();
        assert_eq!(r.names, vec!["www.example.test", "edge.example.test"]);
        assert_eq!(
            r.ips,
            vec![
                IpAddr::V4(Ipv4Addr::new(198, 19, 50, 10)),
                IpAddr::V4(Ipv4Addr::new(198, 19, 50, 11))
            ]
        );
        assert_eq!(r.ttl, 30);
    }

    #[test]
    fn records_for_other_names_are_not_answers() {
        let mut msg = query(1, "a.test", TYPE_A);
        msg[2] = 0x81;
        msg[7] = 1;
        msg.extend_from_slice(&name_bytes("b.test"));
        msg.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 198, 19, 0, 1]);
        let r = parse(&msg).unwrap().resolved();
        assert!(r.ips.is_empty());
        assert_eq!(r.ttl, 0);
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_errors() {
        let mut msg = query(1, "a.test", TYPE_A);
        msg[7] = 1;
        // An answer whose name points at itself.
        let at = msg.len();
        msg.extend_from_slice(&[0xc0, at as u8, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(parse(&msg), Err(WireError::BadName(_))));
    }

    #[test]
    fn odd_bytes_in_labels_are_escaped() {
        let mut q = query(1, "x", TYPE_A);
        // Replace the label "x" by "a.b" with a raw dot and a space.
        q.truncate(12);
        q.extend_from_slice(&[4, b'a', b'.', b' ', b'B', 0, 0, 1, 0, 1]);
        let m = parse(&q).unwrap();
        assert_eq!(m.question.unwrap().name, "a\\046\\032b");
    }

    #[test]
    fn refused_echoes_the_question() {
        let q = query(0x1234, "db.internal.test", TYPE_A);
        let reply = error_reply(&q, RCODE_REFUSED).unwrap();
        let m = parse(&reply).unwrap();
        assert_eq!(m.id, 0x1234);
        assert!(m.is_response());
        assert_eq!(m.rcode(), RCODE_REFUSED);
        assert_eq!(m.question.unwrap().name, "db.internal.test");
        assert!(m.answers.is_empty());
        assert_eq!(error_reply(&q[..5], RCODE_REFUSED), None);
    }

    #[test]
    fn no_input_panics() {
        // Every prefix of a valid response, and byte flips of it.
        let good = cname_response();
        for end in 0..good.len() {
            let _ = parse(&good[..end]);
            let _ = error_reply(&good[..end], RCODE_REFUSED);
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut m = good.clone();
                m[i] ^= 1 << bit;
                let _ = parse(&m).map(|m| m.resolved());
            }
        }
        let long: Vec<u8> = std::iter::repeat_n([63u8; 64], 8).flatten().collect();
        let mut q = query(1, "x", TYPE_A);
        q.truncate(12);
        q.extend_from_slice(&long);
        assert!(parse(&q).is_err());
    }
}
