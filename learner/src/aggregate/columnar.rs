//! The aggregation itself: a hash fold over the columns polars decoded.
//!
//! Every string column is first turned into integer codes (one interner per
//! worker, one column at a time, which keeps the loop tight), then each row
//! is a fixed array of 14 codes folded into a hash map. On this machine
//! that is ~3.3× faster than a polars `group_by` on the same 16 keys
//! (`learnbench`, BENCHMARKS.md), which encodes every string key of every
//! row.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use foldhash::fast::FixedState;
use polars::prelude::*;

use super::{DnsAnswerSummary, FlowSummary, MAX_EVIDENCE_PATHS};
use crate::identity::{is_cidr_identity, Labels, ReservedIdentity};
use crate::pathtemplate;
use crate::record::columns as c;

const NONE: u32 = u32::MAX;

/// Columns the fold reads (the scan projects to these).
pub(crate) const COLUMNS: [&str; 25] = [
    c::WINDOW_START_NS,
    c::WINDOW_END_NS,
    c::NODE,
    c::SRC_IDENTITY,
    c::SRC_NAMESPACE,
    c::SRC_WORKLOAD,
    c::SRC_LABELS,
    c::DST_IDENTITY,
    c::DST_NAMESPACE,
    c::DST_WORKLOAD,
    c::DST_LABELS,
    c::DST_IP,
    c::PROTO,
    c::DST_PORT,
    c::VERDICT,
    c::L7_PROTOCOL,
    c::L7_METHOD,
    c::L7_PATH,
    c::L7_QUERY,
    c::PACKETS,
    c::BYTES,
    c::COUNT,
    c::L7_HOST,
    c::DNS_IPS,
    c::DNS_TTL,
];

/// src identity, namespace, workload, labels; dst identity, namespace,
/// workload, labels, peer; proto, port, L7 protocol, method, path template.
type Key = [u32; 14];

#[derive(Default)]
struct Interner {
    ids: HashMap<Box<str>, u32, FixedState>,
    strings: Vec<Box<str>>,
}

impl Interner {
    fn code(&mut self, text: &str) -> u32 {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(text.into());
        self.ids.insert(text.into(), id);
        id
    }

    fn get(&self, code: u32) -> Option<&str> {
        (code != NONE).then(|| self.strings.get(code as usize).map_or("", |s| &**s))
    }

    fn text(&self, code: u32) -> &str {
        self.get(code).unwrap_or("")
    }
}

struct Agg {
    connections: u64,
    records: u64,
    packets: u64,
    bytes: u64,
    first: i64,
    last: i64,
    /// (verdict code, records)
    verdicts: Vec<(u32, u64)>,
    nodes: Vec<u32>,
    /// The lexicographically smallest distinct raw paths, sorted, at most
    /// `MAX_EVIDENCE_PATHS` (smallest, not first seen: the evidence must not
    /// depend on which worker read which segment first).
    paths: Vec<u32>,
    with_query: u64,
}

/// One worker's partial table.
#[derive(Default)]
pub(crate) struct Folder {
    strings: Interner,
    template_of: Vec<u32>,
    peer_of: HashMap<(u32, u32), u32, FixedState>,
    groups: HashMap<Key, Agg, FixedState>,
    /// DNS answers by (asking identity, namespace, workload, name, address).
    answers: HashMap<AnswerKey, AnswerAgg, FixedState>,
    /// The addresses of each distinct `dns_ips` text, parsed once.
    ips_of: HashMap<u32, Vec<IpAddr>, FixedState>,
}

type AnswerKey = (u32, u32, u32, u32, IpAddr);

struct AnswerAgg {
    first: i64,
    last: i64,
    ttl: u32,
    answers: u64,
}

fn codes(strings: &mut Interner, df: &DataFrame, name: &str) -> PolarsResult<Vec<u32>> {
    let ca = df.column(name)?.str()?;
    Ok(ca
        .iter()
        .map(|v| v.map_or(NONE, |s| strings.code(s)))
        .collect())
}

fn u32s(df: &DataFrame, name: &str) -> PolarsResult<Vec<u32>> {
    let ca = df.column(name)?.u32()?;
    Ok(ca.iter().map(Option::unwrap_or_default).collect())
}

fn u64s(df: &DataFrame, name: &str) -> PolarsResult<Vec<u64>> {
    let ca = df.column(name)?.u64()?;
    Ok(ca.iter().map(Option::unwrap_or_default).collect())
}

impl Folder {
    fn template(&mut self, path: u32) -> u32 {
        if path == NONE {
            return NONE;
        }
        let index = path as usize;
        if index >= self.template_of.len() {
            self.template_of.resize(index + 1, NONE);
        }
        if self.template_of[index] == NONE {
            let raw = self.strings.text(path).to_string();
            let template = pathtemplate::template(&raw).into_owned();
            self.template_of[index] = self.strings.code(&template);
        }
        self.template_of[index]
    }

    /// `dst_peer`: the address as a CIDR for world / CIDR identities, the
    /// entity name for the other reserved ones, else empty.
    fn peer(&mut self, dst_identity: u32, dst_ip: u32) -> u32 {
        let world_like =
            dst_identity == ReservedIdentity::World.number() || dst_identity >= (1 << 24) - 1;
        let ip = if world_like { dst_ip } else { NONE };
        if let Some(&code) = self.peer_of.get(&(dst_identity, ip)) {
            return code;
        }
        let mut peer = self.strings.get(ip).unwrap_or("").to_string();
        if !peer.is_empty() && !peer.contains('/') {
            peer.push_str(if peer.contains(':') { "/128" } else { "/32" });
        }
        if peer.is_empty() && !is_cidr_identity(dst_identity) {
            if let Some(r) = ReservedIdentity::from_number(dst_identity) {
                peer = r.name().to_string();
            }
        }
        let code = self.strings.code(&peer);
        self.peer_of.insert((dst_identity, ip), code);
        code
    }

    /// Fold one decoded frame (the [`COLUMNS`] of some segments).
    pub(crate) fn fold(&mut self, df: &DataFrame) -> PolarsResult<()> {
        let s = &mut self.strings;
        let (src_ns, src_wl, src_lb) = (
            codes(s, df, c::SRC_NAMESPACE)?,
            codes(s, df, c::SRC_WORKLOAD)?,
            codes(s, df, c::SRC_LABELS)?,
        );
        let (dst_ns, dst_wl, dst_lb, dst_ip) = (
            codes(s, df, c::DST_NAMESPACE)?,
            codes(s, df, c::DST_WORKLOAD)?,
            codes(s, df, c::DST_LABELS)?,
            codes(s, df, c::DST_IP)?,
        );
        let (l7p, method, path, verdict, node) = (
            codes(s, df, c::L7_PROTOCOL)?,
            codes(s, df, c::L7_METHOD)?,
            codes(s, df, c::L7_PATH)?,
            codes(s, df, c::VERDICT)?,
            codes(s, df, c::NODE)?,
        );
        // Only whether a query was there matters, not its text.
        let queried: Vec<bool> = df
            .column(c::L7_QUERY)?
            .str()?
            .iter()
            .map(|q| q.is_some_and(|q| !q.is_empty()))
            .collect();
        let (src_id, dst_id) = (u32s(df, c::SRC_IDENTITY)?, u32s(df, c::DST_IDENTITY)?);
        let (proto, port) = (u32s(df, c::PROTO)?, u32s(df, c::DST_PORT)?);
        let (count, packets, bytes) = (
            u64s(df, c::COUNT)?,
            u64s(df, c::PACKETS)?,
            u64s(df, c::BYTES)?,
        );
        let start = df.column(c::WINDOW_START_NS)?.i64()?;
        let end = df.column(c::WINDOW_END_NS)?.i64()?;
        self.fold_answers(df, &src_id, &src_ns, &src_wl)?;
        let times = start.iter().zip(end.iter());

        for (i, (first, last)) in times.enumerate().take(df.height()) {
            // The stored proto and port are u32 for polars' sake; the table's
            // are u8 / u16 (what the record held).
            let key: Key = [
                src_id[i],
                src_ns[i],
                src_wl[i],
                src_lb[i],
                dst_id[i],
                dst_ns[i],
                dst_wl[i],
                dst_lb[i],
                self.peer(dst_id[i], dst_ip[i]),
                u32::from(proto[i] as u8),
                u32::from(port[i] as u16),
                l7p[i],
                method[i],
                self.template(path[i]),
            ];
            let agg = self.groups.entry(key).or_insert_with(|| Agg {
                connections: 0,
                records: 0,
                packets: 0,
                bytes: 0,
                first: i64::MAX,
                last: i64::MIN,
                verdicts: Vec::new(),
                nodes: Vec::new(),
                paths: Vec::new(),
                with_query: 0,
            });
            agg.with_query += u64::from(queried[i]);
            agg.connections += count[i];
            agg.records += 1;
            agg.packets += packets[i];
            agg.bytes += bytes[i];
            agg.first = agg.first.min(first.unwrap_or(i64::MAX));
            agg.last = agg.last.max(last.unwrap_or(i64::MIN));
            let v = if verdict[i] == NONE {
                self.strings.code("")
            } else {
                verdict[i]
            };
            match agg.verdicts.iter_mut().find(|(code, _)| *code == v) {
                Some((_, n)) => *n += 1,
                None => agg.verdicts.push((v, 1)),
            }
            let n = if node[i] == NONE {
                self.strings.code("")
            } else {
                node[i]
            };
            if !agg.nodes.contains(&n) {
                agg.nodes.push(n);
            }
            if path[i] != NONE {
                keep_smallest(&mut agg.paths, path[i], &self.strings);
            }
        }
        Ok(())
    }

    /// The DNS answers of a frame: one entry per address of each answer.
    /// Only answer records (a non-null `dns_ttl`) are looked at, so the
    /// strings of the rest are never interned.
    fn fold_answers(
        &mut self,
        df: &DataFrame,
        src_id: &[u32],
        src_ns: &[u32],
        src_wl: &[u32],
    ) -> PolarsResult<()> {
        let ttl = df.column(c::DNS_TTL)?.u32()?;
        if ttl.null_count() == ttl.len() {
            return Ok(());
        }
        let ips = df.column(c::DNS_IPS)?.str()?;
        let host = df.column(c::L7_HOST)?.str()?;
        let start = df.column(c::WINDOW_START_NS)?.i64()?;
        for (i, ttl) in ttl.iter().enumerate() {
            let (Some(ttl), Some(name)) = (ttl, host.get(i)) else {
                continue;
            };
            let name = self.strings.code(name);
            let text = self.strings.code(ips.get(i).unwrap_or(""));
            let at = start.get(i).unwrap_or_default();
            let strings = &self.strings;
            let addresses = self.ips_of.entry(text).or_insert_with(|| {
                strings
                    .text(text)
                    .split(',')
                    .filter_map(|ip| ip.trim().parse().ok())
                    .collect()
            });
            for &ip in addresses.iter() {
                let key = (src_id[i], src_ns[i], src_wl[i], name, ip);
                let agg = self.answers.entry(key).or_insert(AnswerAgg {
                    first: i64::MAX,
                    last: i64::MIN,
                    ttl: 0,
                    answers: 0,
                });
                agg.first = agg.first.min(at);
                agg.last = agg.last.max(at);
                agg.ttl = agg.ttl.max(ttl);
                agg.answers += 1;
            }
        }
        Ok(())
    }

    /// The partial table with codes turned back into strings.
    pub(crate) fn into_summaries(self) -> (Vec<FlowSummary>, Vec<DnsAnswerSummary>) {
        let s = &self.strings;
        let owned = |code: u32| s.text(code).to_string();
        let opt = |code: u32| s.get(code).map(str::to_string);
        let answers = self
            .answers
            .iter()
            .map(|(&(id, ns, wl, name, ip), agg)| DnsAnswerSummary {
                src_identity: id,
                src_namespace: owned(ns),
                src_workload: owned(wl),
                name: owned(name),
                ip,
                first_answered_ns: agg.first,
                last_answered_ns: agg.last,
                ttl: agg.ttl,
                answers: agg.answers,
            })
            .collect();
        let rows = self
            .groups
            .iter()
            .map(|(k, agg)| FlowSummary {
                src_identity: k[0],
                src_namespace: owned(k[1]),
                src_workload: owned(k[2]),
                src_labels: Labels::from_canonical(s.text(k[3])),
                dst_identity: k[4],
                dst_namespace: owned(k[5]),
                dst_workload: owned(k[6]),
                dst_labels: Labels::from_canonical(s.text(k[7])),
                dst_peer: owned(k[8]),
                proto: k[9] as u8,
                dst_port: k[10] as u16,
                l7_protocol: opt(k[11]),
                l7_method: opt(k[12]),
                path_template: opt(k[13]),
                connections: agg.connections,
                records: agg.records,
                packets: agg.packets,
                bytes: agg.bytes,
                first_seen_ns: agg.first,
                last_seen_ns: agg.last,
                verdicts: agg
                    .verdicts
                    .iter()
                    .map(|&(v, n)| (owned(v), n))
                    .collect::<BTreeMap<_, _>>(),
                nodes: agg.nodes.iter().map(|&n| owned(n)).collect::<BTreeSet<_>>(),
                paths: agg.paths.iter().map(|&p| owned(p)).collect::<BTreeSet<_>>(),
                with_query: agg.with_query,
            })
            .collect();
        (rows, answers)
    }
}

/// Insert `path` into the sorted, capped evidence list if it is among the
/// `MAX_EVIDENCE_PATHS` smallest seen so far.
fn keep_smallest(paths: &mut Vec<u32>, path: u32, strings: &Interner) {
    if paths.contains(&path) {
        return;
    }
    let text = strings.text(path);
    if paths.len() >= MAX_EVIDENCE_PATHS {
        match paths.last() {
            Some(&largest) if text < strings.text(largest) => {
                paths.pop();
            }
            _ => return,
        }
    }
    let at = paths.partition_point(|&p| strings.text(p) < text);
    paths.insert(at, path);
}
