//! `FlowRecord`s to and from a polars `DataFrame` in the store schema.

use std::net::IpAddr;

use polars::prelude::*;

use crate::identity::Labels;
use crate::record::{columns as c, DnsAnswer, FlowRecord, Peer, L7};

fn opt_ip(ip: &Option<IpAddr>) -> Option<String> {
    ip.map(|ip| ip.to_string())
}

/// Build a frame in the exact column order of [`crate::record::store_schema`].
pub fn records_to_frame(records: &[FlowRecord]) -> PolarsResult<DataFrame> {
    refs_to_frame(&records.iter().collect::<Vec<_>>())
}

pub(crate) fn refs_to_frame(records: &[&FlowRecord]) -> PolarsResult<DataFrame> {
    let n = records.len();
    let col_i64 = |name: &str, f: &dyn Fn(&FlowRecord) -> i64| {
        Column::new(
            name.into(),
            records.iter().copied().map(f).collect::<Vec<i64>>(),
        )
    };
    let col_u32 = |name: &str, f: &dyn Fn(&FlowRecord) -> u32| {
        Column::new(
            name.into(),
            records.iter().copied().map(f).collect::<Vec<u32>>(),
        )
    };
    let col_u64 = |name: &str, f: &dyn Fn(&FlowRecord) -> u64| {
        Column::new(
            name.into(),
            records.iter().copied().map(f).collect::<Vec<u64>>(),
        )
    };
    let col_str = |name: &str, f: &dyn Fn(&FlowRecord) -> String| {
        Column::new(
            name.into(),
            records.iter().copied().map(f).collect::<Vec<String>>(),
        )
    };
    let col_opt_str = |name: &str, f: &dyn Fn(&FlowRecord) -> Option<String>| {
        Column::new(
            name.into(),
            records
                .iter()
                .copied()
                .map(f)
                .collect::<Vec<Option<String>>>(),
        )
    };
    let l7_str = |f: fn(&L7) -> Option<String>| move |r: &FlowRecord| r.l7.as_ref().and_then(f);
    fn answer(r: &FlowRecord) -> Option<&DnsAnswer> {
        r.l7.as_ref().and_then(|l| l.dns.as_ref())
    }
    let columns = vec![
        col_i64(c::WINDOW_START_NS, &|r| r.window_start_ns),
        col_i64(c::WINDOW_END_NS, &|r| r.window_end_ns),
        col_str(c::NODE, &|r| r.node.clone()),
        col_u32(c::SRC_IDENTITY, &|r| r.src.identity),
        col_str(c::SRC_NAMESPACE, &|r| r.src.namespace.clone()),
        col_str(c::SRC_WORKLOAD, &|r| r.src.workload.clone()),
        col_str(c::SRC_LABELS, &|r| r.src.labels.to_canonical()),
        col_opt_str(c::SRC_IP, &|r| opt_ip(&r.src.ip)),
        col_u32(c::DST_IDENTITY, &|r| r.dst.identity),
        col_str(c::DST_NAMESPACE, &|r| r.dst.namespace.clone()),
        col_str(c::DST_WORKLOAD, &|r| r.dst.workload.clone()),
        col_str(c::DST_LABELS, &|r| r.dst.labels.to_canonical()),
        col_opt_str(c::DST_IP, &|r| opt_ip(&r.dst.ip)),
        col_u32(c::PROTO, &|r| u32::from(r.proto)),
        col_u32(c::DST_PORT, &|r| u32::from(r.dst_port)),
        col_str(c::DIRECTION, &|r| r.direction.as_str().to_string()),
        col_str(c::VERDICT, &|r| r.verdict.as_str().to_string()),
        col_str(c::REASON, &|r| r.reason.clone()),
        col_opt_str(c::L7_PROTOCOL, &|r| {
            r.l7.as_ref().map(|l| l.protocol.as_str().to_string())
        }),
        col_opt_str(c::L7_METHOD, &l7_str(|l| l.method.clone())),
        col_opt_str(c::L7_PATH, &l7_str(|l| l.path.clone())),
        col_opt_str(c::L7_QUERY, &l7_str(|l| l.query.clone())),
        col_opt_str(c::L7_HOST, &l7_str(|l| l.host.clone())),
        Column::new(
            c::L7_STATUS.into(),
            records
                .iter()
                .map(|r| r.l7.as_ref().and_then(|l| l.status))
                .collect::<Vec<Option<u32>>>(),
        ),
        col_u64(c::PACKETS, &|r| r.packets),
        col_u64(c::BYTES, &|r| r.bytes),
        col_u64(c::COUNT, &|r| r.count),
        col_opt_str(c::DNS_IPS, &|r| answer(r).map(DnsAnswer::ips_text)),
        Column::new(
            c::DNS_TTL.into(),
            records
                .iter()
                .map(|r| answer(r).map(|a| a.ttl))
                .collect::<Vec<Option<u32>>>(),
        ),
    ];
    DataFrame::new(n, columns)
}

fn text(df: &DataFrame, name: &str) -> PolarsResult<Vec<Option<String>>> {
    Ok(df
        .column(name)?
        .str()?
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn parse_text<T: std::str::FromStr<Err = String>>(
    value: Option<&str>,
    column: &str,
) -> PolarsResult<T> {
    value
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| polars_err!(ComputeError: "column {column}: {e}"))
}

/// Read records back (replay, tests, the recommender's flow replay).
pub fn frame_to_records(df: &DataFrame) -> PolarsResult<Vec<FlowRecord>> {
    let start = df.column(c::WINDOW_START_NS)?.i64()?.clone();
    let end = df.column(c::WINDOW_END_NS)?.i64()?.clone();
    let node = text(df, c::NODE)?;
    let src_id = df.column(c::SRC_IDENTITY)?.u32()?.clone();
    let dst_id = df.column(c::DST_IDENTITY)?.u32()?.clone();
    let (src_ns, src_wl, src_lb, src_ip) = (
        text(df, c::SRC_NAMESPACE)?,
        text(df, c::SRC_WORKLOAD)?,
        text(df, c::SRC_LABELS)?,
        text(df, c::SRC_IP)?,
    );
    let (dst_ns, dst_wl, dst_lb, dst_ip) = (
        text(df, c::DST_NAMESPACE)?,
        text(df, c::DST_WORKLOAD)?,
        text(df, c::DST_LABELS)?,
        text(df, c::DST_IP)?,
    );
    let proto = df.column(c::PROTO)?.u32()?.clone();
    let port = df.column(c::DST_PORT)?.u32()?.clone();
    let direction = df.column(c::DIRECTION)?.str()?.clone();
    let verdict = df.column(c::VERDICT)?.str()?.clone();
    let reason = text(df, c::REASON)?;
    let l7_proto = df.column(c::L7_PROTOCOL)?.str()?.clone();
    let (method, path, query, host) = (
        text(df, c::L7_METHOD)?,
        text(df, c::L7_PATH)?,
        text(df, c::L7_QUERY)?,
        text(df, c::L7_HOST)?,
    );
    let status = df.column(c::L7_STATUS)?.u32()?.clone();
    let packets = df.column(c::PACKETS)?.u64()?.clone();
    let bytes = df.column(c::BYTES)?.u64()?.clone();
    let count = df.column(c::COUNT)?.u64()?.clone();
    // Columns added later are absent from a frame of an older segment read
    // on its own: no record of it has a DNS answer.
    let dns_ips = match df.column(c::DNS_IPS) {
        Ok(_) => text(df, c::DNS_IPS)?,
        Err(_) => vec![None; df.height()],
    };
    let dns_ttl: Vec<Option<u32>> = match df.column(c::DNS_TTL) {
        Ok(column) => column.u32()?.iter().collect(),
        Err(_) => vec![None; df.height()],
    };

    let peer = |id: Option<u32>,
                ns: &Option<String>,
                wl: &Option<String>,
                lb: &Option<String>,
                ip: &Option<String>| Peer {
        identity: id.unwrap_or_default(),
        namespace: ns.clone().unwrap_or_default(),
        workload: wl.clone().unwrap_or_default(),
        labels: Labels::from_canonical(lb.as_deref().unwrap_or_default()),
        ip: ip.as_deref().and_then(|ip| ip.parse().ok()),
    };
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let l7 = match l7_proto.get(i) {
            Some(p) => Some(L7 {
                protocol: parse_text(Some(p), c::L7_PROTOCOL)?,
                method: method[i].clone(),
                path: path[i].clone(),
                query: query[i].clone(),
                host: host[i].clone(),
                status: status.get(i),
                dns: DnsAnswer::from_columns(dns_ips[i].as_deref(), dns_ttl[i]),
            }),
            None => None,
        };
        out.push(FlowRecord {
            window_start_ns: start.get(i).unwrap_or_default(),
            window_end_ns: end.get(i).unwrap_or_default(),
            node: node[i].clone().unwrap_or_default(),
            src: peer(
                src_id.get(i),
                &src_ns[i],
                &src_wl[i],
                &src_lb[i],
                &src_ip[i],
            ),
            dst: peer(
                dst_id.get(i),
                &dst_ns[i],
                &dst_wl[i],
                &dst_lb[i],
                &dst_ip[i],
            ),
            proto: proto.get(i).unwrap_or_default() as u8,
            dst_port: port.get(i).unwrap_or_default() as u16,
            direction: parse_text(direction.get(i), c::DIRECTION)?,
            verdict: parse_text(verdict.get(i), c::VERDICT)?,
            reason: reason[i].clone().unwrap_or_default(),
            l7,
            packets: packets.get(i).unwrap_or_default(),
            bytes: bytes.get(i).unwrap_or_default(),
            count: count.get(i).unwrap_or_default(),
        });
    }
    Ok(out)
}
