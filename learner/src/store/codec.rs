//! The compact form of records between `append` and a Parquet segment.
//!
//! A segment's records are kept as fixed-size [`Row`]s whose strings, label
//! sets and peers are interned in a per-segment [`Dict`]. The write-ahead
//! file holds the same thing as a byte stream: definitions of new
//! dictionary entries followed by varint-encoded rows, in CRC-checked
//! frames (one per `append`). Interning is why ingest is fast: a pod's
//! namespace, workload and labels are hashed once per record and written
//! once per segment, not serialised with every record.
//!
//! Frame: `u32 payload length (LE) | u32 crc32 of payload | payload`.
//! Payload: a sequence of tagged items (`TAG_*`); dictionary ids are
//! implicit (the next free index), so a reader that replays frames in order
//! rebuilds the writer's dictionary exactly.

use std::collections::HashMap;
use std::net::IpAddr;

use foldhash::fast::FixedState;

use crate::identity::Labels;
use crate::record::{Direction, FlowRecord, L7Protocol, Peer, Verdict, L7};

/// First bytes of every write-ahead file; anything else is not ours.
pub(crate) const WAL_MAGIC: &[u8; 8] = b"CNPWAL02";
/// A frame larger than this is corruption, not data (a batch of 1M records
/// encodes to ~40 MB).
pub(crate) const MAX_FRAME: u32 = 1 << 30;

const TAG_STRING: u8 = 1;
const TAG_LABELS: u8 = 2;
const TAG_PEER: u8 = 3;
const TAG_RECORD: u8 = 4;

/// Marks an absent optional id.
pub(crate) const NONE: u32 = u32::MAX;

/// A peer without its address (the address is per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PeerEntry {
    pub identity: u32,
    pub namespace: u32,
    pub workload: u32,
    pub labels: u32,
}

/// One record with every string replaced by its dictionary id.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub start_ns: i64,
    pub end_ns: i64,
    pub node: u32,
    pub src: u32,
    pub src_ip: u32,
    pub dst: u32,
    pub dst_ip: u32,
    pub proto: u8,
    pub dst_port: u16,
    pub direction: Direction,
    pub verdict: Verdict,
    pub reason: u32,
    pub l7: Option<L7Protocol>,
    pub method: u32,
    pub path: u32,
    pub query: u32,
    pub host: u32,
    pub status: Option<u32>,
    /// A DNS answer's comma-joined addresses (a string id; `NONE` without
    /// an answer) and its TTL (`Some` exactly when there is an answer).
    pub dns_ips: u32,
    pub dns_ttl: Option<u32>,
    pub packets: u64,
    pub bytes: u64,
    pub count: u64,
}

type Fast = FixedState;

/// The per-segment dictionary.
#[derive(Default)]
pub(crate) struct Dict {
    pub strings: Vec<String>,
    string_ids: HashMap<String, u32, Fast>,
    pub labels: Vec<Labels>,
    label_ids: HashMap<Labels, u32, Fast>,
    /// `Labels::shared_id` of each set in `labels` (which keeps it alive, so
    /// the address cannot be reused): clones of an inventory's label set hit
    /// here without hashing the map.
    label_by_address: HashMap<usize, u32, Fast>,
    pub peers: Vec<PeerEntry>,
    peer_ids: HashMap<PeerEntry, u32, Fast>,
    /// (identity, `Labels::shared_id`) -> peer, only for label sets whose
    /// allocation `labels` keeps alive: the common case (clones of the
    /// inventory's sets) skips hashing the names.
    peer_by_address: HashMap<(u32, usize), u32, Fast>,
    ip_ids: HashMap<IpAddr, u32, Fast>,
}

impl Dict {
    pub fn string(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", String::as_str)
    }

    fn define_labels(&mut self, labels: Labels) -> u32 {
        let id = self.labels.len() as u32;
        self.label_by_address.insert(labels.shared_id(), id);
        self.label_ids.insert(labels.clone(), id);
        self.labels.push(labels);
        id
    }

    fn define_string(&mut self, text: String) -> u32 {
        let id = self.strings.len() as u32;
        self.string_ids.insert(text.clone(), id);
        self.strings.push(text);
        id
    }
}

/// Turns records into rows, growing the dictionary and writing every new
/// definition and row into `out` (the next WAL frame's payload).
pub(crate) struct Encoder<'a> {
    pub dict: &'a mut Dict,
    pub out: &'a mut Vec<u8>,
}

impl Encoder<'_> {
    fn string(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.dict.string_ids.get(text) {
            return id;
        }
        self.out.push(TAG_STRING);
        put_bytes(self.out, text.as_bytes());
        self.dict.define_string(text.to_string())
    }

    fn opt_string(&mut self, text: Option<&str>) -> u32 {
        text.map_or(NONE, |t| self.string(t))
    }

    fn labels(&mut self, labels: &Labels) -> u32 {
        if let Some(&id) = self.dict.label_by_address.get(&labels.shared_id()) {
            return id;
        }
        if let Some(&id) = self.dict.label_ids.get(labels) {
            return id;
        }
        let pairs: Vec<(u32, u32)> = labels
            .iter()
            .map(|(k, v)| (self.string(k), self.string(v)))
            .collect();
        self.out.push(TAG_LABELS);
        put_varint(self.out, pairs.len() as u64);
        for (k, v) in pairs {
            put_varint(self.out, u64::from(k));
            put_varint(self.out, u64::from(v));
        }
        self.dict.define_labels(labels.clone())
    }

    fn peer(&mut self, peer: &Peer) -> u32 {
        let address = (peer.identity, peer.labels.shared_id());
        if let Some(&id) = self.dict.peer_by_address.get(&address) {
            let known = self.dict.peers[id as usize];
            if self.dict.string(known.namespace) == peer.namespace
                && self.dict.string(known.workload) == peer.workload
            {
                return id;
            }
        }
        let id = self.peer_slow(peer);
        let labels = self.dict.peers[id as usize].labels as usize;
        if self.dict.labels[labels].shared_id() == address.1 {
            self.dict.peer_by_address.insert(address, id);
        }
        id
    }

    fn peer_slow(&mut self, peer: &Peer) -> u32 {
        let entry = PeerEntry {
            identity: peer.identity,
            namespace: self.string(&peer.namespace),
            workload: self.string(&peer.workload),
            labels: self.labels(&peer.labels),
        };
        if let Some(&id) = self.dict.peer_ids.get(&entry) {
            return id;
        }
        self.out.push(TAG_PEER);
        for v in [
            entry.identity,
            entry.namespace,
            entry.workload,
            entry.labels,
        ] {
            put_varint(self.out, u64::from(v));
        }
        let id = self.dict.peers.len() as u32;
        self.dict.peers.push(entry);
        self.dict.peer_ids.insert(entry, id);
        id
    }

    fn ip(&mut self, ip: Option<IpAddr>) -> u32 {
        let Some(ip) = ip else { return NONE };
        if let Some(&id) = self.dict.ip_ids.get(&ip) {
            return id;
        }
        let id = self.string(&ip.to_string());
        self.dict.ip_ids.insert(ip, id);
        id
    }

    /// Intern `record`, append its encoding to the payload, return its row.
    pub fn record(&mut self, record: &FlowRecord) -> Row {
        let l7 = record.l7.as_ref();
        let text = |f: fn(&L7) -> &Option<String>| l7.and_then(|l| f(l).as_deref());
        let answer = l7.and_then(|l| l.dns.as_ref());
        let row = Row {
            start_ns: record.window_start_ns,
            end_ns: record.window_end_ns,
            node: self.string(&record.node),
            src: self.peer(&record.src),
            src_ip: self.ip(record.src.ip),
            dst: self.peer(&record.dst),
            dst_ip: self.ip(record.dst.ip),
            proto: record.proto,
            dst_port: record.dst_port,
            direction: record.direction,
            verdict: record.verdict,
            reason: self.string(&record.reason),
            l7: l7.map(|l| l.protocol),
            method: self.opt_string(text(|l| &l.method)),
            path: self.opt_string(text(|l| &l.path)),
            query: self.opt_string(text(|l| &l.query)),
            host: self.opt_string(text(|l| &l.host)),
            status: l7.and_then(|l| l.status),
            dns_ips: match answer {
                Some(a) => self.string(&a.ips_text()),
                None => NONE,
            },
            dns_ttl: answer.map(|a| a.ttl),
            packets: record.packets,
            bytes: record.bytes,
            count: record.count,
        };
        encode_row(self.out, &row);
        row
    }
}

fn direction_code(d: Direction) -> u8 {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
        Direction::Unknown => 2,
    }
}

fn verdict_code(v: Verdict) -> u8 {
    match v {
        Verdict::Forwarded => 0,
        Verdict::WouldDrop => 1,
        Verdict::Dropped => 2,
        Verdict::L7WouldDeny => 3,
        Verdict::L7Denied => 4,
    }
}

/// Optional ids are stored +1 so that absent is 0 (one byte).
fn opt_id(id: u32) -> u64 {
    if id == NONE {
        0
    } else {
        u64::from(id) + 1
    }
}

fn encode_row(out: &mut Vec<u8>, row: &Row) {
    out.push(TAG_RECORD);
    put_varint(out, zigzag(row.start_ns));
    put_varint(out, zigzag(row.end_ns.wrapping_sub(row.start_ns)));
    for id in [row.node, row.src, row.dst, row.reason] {
        put_varint(out, u64::from(id));
    }
    put_varint(out, opt_id(row.src_ip));
    put_varint(out, opt_id(row.dst_ip));
    out.push(row.proto);
    put_varint(out, u64::from(row.dst_port));
    // direction (2 bits) | verdict (3 bits) | l7 protocol (2 bits) | DNS
    // answer (1 bit). The answer bit came last and is 0 in frames written
    // before it, which therefore still decode.
    let l7 = match row.l7 {
        None => 0,
        Some(L7Protocol::Http) => 1,
        Some(L7Protocol::Dns) => 2,
    };
    let answer = u8::from(row.l7.is_some() && row.dns_ttl.is_some());
    out.push(
        direction_code(row.direction) | verdict_code(row.verdict) << 2 | l7 << 5 | answer << 7,
    );
    if row.l7.is_some() {
        for id in [row.method, row.path, row.query, row.host] {
            put_varint(out, opt_id(id));
        }
        put_varint(out, row.status.map_or(0, |s| u64::from(s) + 1));
        if let (1, Some(ttl)) = (answer, row.dns_ttl) {
            put_varint(out, opt_id(row.dns_ips));
            put_varint(out, u64::from(ttl));
        }
    }
    put_varint(out, row.packets);
    put_varint(out, row.bytes);
    put_varint(out, row.count);
}

/// What went wrong decoding a frame's payload (the frame passed its CRC, so
/// this is a bug or a file from another version, not a torn write).
#[derive(Debug)]
pub(crate) struct DecodeError(pub String);

/// Applies one frame's payload: definitions grow `dict`, rows go to `rows`.
/// On error nothing of the frame is kept.
pub(crate) fn decode_payload(
    payload: &[u8],
    dict: &mut Dict,
    rows: &mut Vec<Row>,
) -> Result<(), DecodeError> {
    let (strings, labels, peers, row_count) = (
        dict.strings.len(),
        dict.labels.len(),
        dict.peers.len(),
        rows.len(),
    );
    let result = decode_items(payload, dict, rows);
    if result.is_err() {
        // Roll back to the state before the frame.
        for text in dict.strings.drain(strings..) {
            dict.string_ids.remove(&text);
        }
        for set in dict.labels.drain(labels..) {
            dict.label_by_address.remove(&set.shared_id());
            dict.label_ids.remove(&set);
        }
        for peer in dict.peers.drain(peers..) {
            dict.peer_ids.remove(&peer);
        }
        rows.truncate(row_count);
    }
    result
}

fn decode_items(payload: &[u8], dict: &mut Dict, rows: &mut Vec<Row>) -> Result<(), DecodeError> {
    let mut cur = Cursor {
        buf: payload,
        pos: 0,
    };
    while cur.pos < payload.len() {
        match cur.byte()? {
            TAG_STRING => {
                let bytes = cur.bytes()?;
                let text = String::from_utf8(bytes.to_vec())
                    .map_err(|_| DecodeError("string is not UTF-8".into()))?;
                dict.define_string(text);
            }
            TAG_LABELS => {
                let n = cur.varint()?;
                let mut labels = Labels::new();
                for _ in 0..n {
                    let key = cur.string_id(dict)?;
                    let value = cur.string_id(dict)?;
                    labels.insert(dict.string(key), dict.string(value));
                }
                dict.define_labels(labels);
            }
            TAG_PEER => {
                let identity = cur.u32()?;
                let namespace = cur.string_id(dict)?;
                let workload = cur.string_id(dict)?;
                let labels = cur.u32()?;
                if labels as usize >= dict.labels.len() {
                    return Err(DecodeError(format!("label set {labels} is not defined")));
                }
                let entry = PeerEntry {
                    identity,
                    namespace,
                    workload,
                    labels,
                };
                let id = dict.peers.len() as u32;
                dict.peers.push(entry);
                dict.peer_ids.insert(entry, id);
            }
            TAG_RECORD => rows.push(cur.row(dict)?),
            tag => return Err(DecodeError(format!("unknown item tag {tag}"))),
        }
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| DecodeError("payload ends inside an item".into()))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError("varint longer than 10 bytes".into()))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError("id out of range".into()))
    }

    fn bytes(&mut self) -> Result<&[u8], DecodeError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| DecodeError("length out of range".into()))?;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| DecodeError("string runs past the payload".into()))?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn string_id(&mut self, dict: &Dict) -> Result<u32, DecodeError> {
        let id = self.u32()?;
        if id as usize >= dict.strings.len() {
            return Err(DecodeError(format!("string {id} is not defined")));
        }
        Ok(id)
    }

    fn opt_string_id(&mut self, dict: &Dict) -> Result<u32, DecodeError> {
        match self.varint()? {
            0 => Ok(NONE),
            n => {
                let id = u32::try_from(n - 1).map_err(|_| DecodeError("id out of range".into()))?;
                if id as usize >= dict.strings.len() {
                    return Err(DecodeError(format!("string {id} is not defined")));
                }
                Ok(id)
            }
        }
    }

    fn peer_id(&mut self, dict: &Dict) -> Result<u32, DecodeError> {
        let id = self.u32()?;
        if id as usize >= dict.peers.len() {
            return Err(DecodeError(format!("peer {id} is not defined")));
        }
        Ok(id)
    }

    fn row(&mut self, dict: &Dict) -> Result<Row, DecodeError> {
        let start_ns = unzigzag(self.varint()?);
        let end_ns = start_ns.wrapping_add(unzigzag(self.varint()?));
        let node = self.string_id(dict)?;
        let src = self.peer_id(dict)?;
        let dst = self.peer_id(dict)?;
        let reason = self.string_id(dict)?;
        let src_ip = self.opt_string_id(dict)?;
        let dst_ip = self.opt_string_id(dict)?;
        let proto = self.byte()?;
        let dst_port =
            u16::try_from(self.varint()?).map_err(|_| DecodeError("port out of range".into()))?;
        let flags = self.byte()?;
        let direction = match flags & 0b11 {
            0 => Direction::Ingress,
            1 => Direction::Egress,
            _ => Direction::Unknown,
        };
        let verdict = match (flags >> 2) & 0b111 {
            0 => Verdict::Forwarded,
            1 => Verdict::WouldDrop,
            2 => Verdict::Dropped,
            3 => Verdict::L7WouldDeny,
            4 => Verdict::L7Denied,
            v => return Err(DecodeError(format!("unknown verdict code {v}"))),
        };
        let l7 = match (flags >> 5) & 0b11 {
            0 => None,
            1 => Some(L7Protocol::Http),
            2 => Some(L7Protocol::Dns),
            v => return Err(DecodeError(format!("unknown L7 protocol code {v}"))),
        };
        let (mut method, mut path, mut query, mut host, mut status) =
            (NONE, NONE, NONE, NONE, None);
        let (mut dns_ips, mut dns_ttl) = (NONE, None);
        if l7.is_none() && flags & 0x80 != 0 {
            return Err(DecodeError("a DNS answer on a record without L7".into()));
        }
        if l7.is_some() {
            method = self.opt_string_id(dict)?;
            path = self.opt_string_id(dict)?;
            query = self.opt_string_id(dict)?;
            host = self.opt_string_id(dict)?;
            status = match self.varint()? {
                0 => None,
                n => Some(
                    u32::try_from(n - 1).map_err(|_| DecodeError("status out of range".into()))?,
                ),
            };
            if flags & 0x80 != 0 {
                dns_ips = self.opt_string_id(dict)?;
                dns_ttl = Some(
                    u32::try_from(self.varint()?)
                        .map_err(|_| DecodeError("DNS TTL out of range".into()))?,
                );
            }
        }
        Ok(Row {
            start_ns,
            end_ns,
            node,
            src,
            src_ip,
            dst,
            dst_ip,
            proto,
            dst_port,
            direction,
            verdict,
            reason,
            l7,
            method,
            path,
            query,
            host,
            status,
            dns_ips,
            dns_ttl,
            packets: self.varint()?,
            bytes: self.varint()?,
            count: self.varint()?,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Frame a payload: length, CRC, bytes.
pub(crate) fn frame_header(payload: &[u8]) -> [u8; 8] {
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthConfig, SynthFlows};

    #[test]
    fn varints_and_zigzag_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut cur = Cursor { buf: &out, pos: 0 };
            assert_eq!(cur.varint().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX, -1_767_225_600_000_000_000] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn encoded_rows_decode_to_the_same_dictionary() {
        let records: Vec<_> = SynthFlows::new(SynthConfig::default()).take(500).collect();
        let mut dict = Dict::default();
        let mut payload = Vec::new();
        let rows: Vec<Row> = {
            let mut enc = Encoder {
                dict: &mut dict,
                out: &mut payload,
            };
            records.iter().map(|r| enc.record(r)).collect()
        };
        let mut dict2 = Dict::default();
        let mut rows2 = Vec::new();
        decode_payload(&payload, &mut dict2, &mut rows2).unwrap();
        assert_eq!(dict.strings, dict2.strings);
        assert_eq!(dict.labels, dict2.labels);
        assert_eq!(dict.peers, dict2.peers);
        assert_eq!(rows.len(), rows2.len());
        for (a, b) in rows.iter().zip(&rows2) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }

    #[test]
    fn garbage_payloads_are_errors_and_leave_nothing_behind() {
        let records: Vec<_> = SynthFlows::new(SynthConfig::default()).take(50).collect();
        let mut dict = Dict::default();
        let mut payload = Vec::new();
        let mut enc = Encoder {
            dict: &mut dict,
            out: &mut payload,
        };
        for r in &records {
            enc.record(r);
        }
        // Every prefix of a valid payload and some flipped bytes: an error or
        // a success, never a panic; an error keeps nothing of the frame.
        for cut in 0..payload.len() {
            let mut d = Dict::default();
            let mut rows = Vec::new();
            if decode_payload(&payload[..cut], &mut d, &mut rows).is_err() {
                assert!(d.strings.is_empty() && d.peers.is_empty() && rows.is_empty());
            }
        }
        for i in (0..payload.len()).step_by(7) {
            let mut bad = payload.clone();
            bad[i] ^= 0xa5;
            let mut d = Dict::default();
            let mut rows = Vec::new();
            let _ = decode_payload(&bad, &mut d, &mut rows);
        }
    }

    /// Random bytes and randomly mutated valid payloads (the fuzz-style
    /// test of this decoder: a WAL comes from disk and may be anything).
    #[test]
    fn random_payloads_never_panic() {
        let records: Vec<_> = SynthFlows::new(SynthConfig::default()).take(40).collect();
        let mut dict = Dict::default();
        let mut valid = Vec::new();
        let mut enc = Encoder {
            dict: &mut dict,
            out: &mut valid,
        };
        for r in &records {
            enc.record(r);
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 200) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut bytes = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let at = (next() as usize) % bytes.len();
                    match next() % 3 {
                        0 => bytes[at] = next() as u8,
                        1 => {
                            bytes.remove(at);
                        }
                        _ => bytes.insert(at, next() as u8),
                    }
                }
                bytes
            };
            let mut d = Dict::default();
            let mut rows = Vec::new();
            let ok = decode_payload(&input, &mut d, &mut rows).is_ok();
            // Whatever decoded refers only to what was defined.
            if ok {
                for row in &rows {
                    assert!((row.src as usize) < d.peers.len());
                    assert!((row.dst as usize) < d.peers.len());
                    assert!((row.node as usize) < d.strings.len());
                }
            }
        }
    }
}
