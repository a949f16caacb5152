//! `--store DIR`: the agent's observations as learner `FlowRecord`s in a
//! crash-safe `FlowStore`.
//!
//! Identities are resolved when an event arrives, from the lab inventory
//! the agent attached with (pod IPs are reused; resolving later could name
//! the wrong pod). Every ring-buffer batch is appended with one fsynced
//! write-ahead write before the agent reads the next one, so a SIGKILLed
//! agent loses at most the batch it was writing; the next `FlowStore::open`
//! replays what was acknowledged.
//!
//! # Events and counters without double counting
//!
//! The datapath emits one event when a connection is first seen on a veth
//! (plus one per dropped packet in enforce) and counts every packet in
//! `cnp_flows`. An event becomes a record with `count` 1 for the first event
//! of its flow key in this session (0 for the later ones: the same
//! connection's dropped retransmits) and `packets` 1, `bytes` 0.
//! On a clean stop, [`StoreSink::finish`] folds in the per-flow counters:
//! for each flow active since the session started it adds one record with
//! `packets` = counter delta since the session's start snapshot minus the
//! packets the event records already carried, `bytes` = the byte delta,
//! and `count` 1 only when the connection started in this session and no
//! event of it arrived (ring buffer overflow), else 0. So the session's sum
//! of packets/bytes equals the counter deltas, and each connection is
//! counted once per veth that saw it, whether or not its event got through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::Context;
use cnpilot_bpf::maps::{FlowCounters, FlowEvent, FlowKey};
use cnpilot_bpf::Tables;
use cnpilot_learner::inventory::InventorySnapshot;
use cnpilot_learner::{Direction, FlowRecord, FlowStore, Inventory, L7Protocol, Verdict, L7};

use cnpilot_proxy::dns::DnsEvent;
use cnpilot_proxy::event::{L7Event, L7Verdict};

/// Segments are written at least this often, so `cnpilot learn` sees a
/// long-running agent's flows (the write-ahead file already makes them durable).
const FLUSH_EVERY: Duration = Duration::from_secs(10);

/// What a session wrote, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
pub struct StoreSummary {
    pub event_records: u64,
    pub l7_records: u64,
    pub counter_records: u64,
    /// Connections the counters had that no event reported (ring overflow).
    pub recovered_connections: u64,
}

pub struct StoreSink {
    store: FlowStore,
    dir: PathBuf,
    inventory: Inventory,
    node: String,
    /// Unix ns minus `CLOCK_MONOTONIC` ns (the clock of `bpf_ktime_get_ns`).
    wall_offset_ns: i64,
    /// Monotonic ns when the session started.
    started_mono_ns: u64,
    /// Counters at the session's start: only the delta is this session's.
    baseline: HashMap<FlowKey, FlowCounters>,
    /// Event records stored per flow key in this session.
    events_per_flow: HashMap<FlowKey, u64>,
    last_flush: Instant,
    summary: StoreSummary,
}

impl StoreSink {
    /// Open (or create) the store, replaying a crashed session's write-ahead
    /// file, and snapshot the counters the session starts from.
    pub fn open(
        dir: &Path,
        snapshot: &InventorySnapshot,
        node: &str,
        tables: &Tables,
    ) -> crate::Result<StoreSink> {
        let store = FlowStore::open(dir)
            .with_context(|| format!("opening flow store {}", dir.display()))?;
        let baseline = tables.read_counters()?.into_iter().collect();
        let (wall_offset_ns, started_mono_ns) = clock_offset();
        Ok(StoreSink {
            store,
            dir: dir.to_path_buf(),
            inventory: Inventory::from_snapshot(&without_service_accounts(snapshot)),
            node: node.to_string(),
            wall_offset_ns,
            started_mono_ns,
            baseline,
            events_per_flow: HashMap::new(),
            last_flush: Instant::now(),
            summary: StoreSummary::default(),
        })
    }

    /// Resolve and durably append one ring-buffer batch.
    pub fn record_events(&mut self, events: &[FlowEvent]) -> crate::Result<()> {
        let mut records = Vec::with_capacity(events.len());
        for ev in events {
            let mut record =
                FlowRecord::from_event(ev, &self.inventory, &self.node, self.wall_offset_ns);
            let seen = self.events_per_flow.entry(key_of(ev)).or_insert(0);
            if *seen > 0 {
                record.count = 0;
            }
            *seen += 1;
            records.push(record);
        }
        self.summary.event_records += records.len() as u64;
        self.append(&records)
    }

    /// One request the L7 proxy saw (identities are the proxy's, resolved
    /// when it accepted the connection; names come from the inventory now).
    pub fn record_l7(&mut self, ev: &L7Event) -> crate::Result<()> {
        let record = self.l7_record(ev);
        self.summary.l7_records += 1;
        self.append(&[record])
    }

    /// One query the DNS proxy saw: a UDP or TCP record from the pod to the
    /// server it asked, with the query, its rcode and what it resolved.
    pub fn record_dns(&mut self, ev: &DnsEvent) -> crate::Result<()> {
        let ts = unix_ns(ev.ts);
        let (verdict, reason) = l7_verdict(ev.verdict, &ev.reason);
        let record = FlowRecord {
            window_start_ns: ts,
            window_end_ns: ts,
            node: self.node.clone(),
            src: self.resolved(IpAddr::V4(*ev.src.ip()), ev.src_identity, ts),
            dst: self.resolved(IpAddr::V4(*ev.server.ip()), ev.dst_identity, ts),
            proto: ev.proto,
            dst_port: ev.server.port(),
            direction: Direction::Egress,
            verdict,
            reason,
            l7: Some(L7 {
                protocol: L7Protocol::Dns,
                method: (ev.qtype != 0).then(|| cnpilot_proxy::dns::qtype_name(ev.qtype)),
                path: None,
                query: None,
                host: (!ev.qname.is_empty()).then(|| ev.qname.clone()),
                status: ev.rcode.map(u32::from),
                dns: (!ev.ips.is_empty()).then(|| cnpilot_learner::DnsAnswer {
                    ips: ev.ips.clone(),
                    ttl: ev.ttl,
                }),
            }),
            packets: 0,
            bytes: 0,
            count: 1,
        };
        self.summary.l7_records += 1;
        self.append(&[record])
    }

    /// A peer as the proxy identified it, named from the inventory now.
    fn resolved(&self, ip: IpAddr, identity: u32, ts: i64) -> cnpilot_learner::Peer {
        let r = self.inventory.resolve(ip, ts, Some(&self.node));
        cnpilot_learner::Peer {
            identity: if identity != 0 { identity } else { r.identity },
            namespace: r.namespace,
            workload: r.workload,
            labels: r.labels,
            ip: Some(ip),
        }
    }

    fn l7_record(&self, ev: &L7Event) -> FlowRecord {
        let ts = unix_ns(ev.ts);
        let peer = |ip: IpAddr, identity: u32| self.resolved(ip, identity, ts);
        let (verdict, reason) = l7_verdict(ev.verdict, &ev.reason);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        FlowRecord {
            window_start_ns: ts,
            window_end_ns: ts,
            node: self.node.clone(),
            src: peer(ev.src_ip, ev.src_identity),
            dst: peer(ev.dst_ip, ev.dst_identity),
            proto: 6,
            dst_port: ev.dport,
            // The proxy sits between the client's egress and the server's
            // ingress; it is neither.
            direction: Direction::Unknown,
            verdict,
            reason,
            l7: Some(L7 {
                protocol: L7Protocol::Http,
                method: non_empty(&ev.method),
                path: non_empty(&ev.path),
                query: ev.query.clone(),
                host: ev.host.clone(),
                status: ev.status.map(u32::from),
                dns: None,
            }),
            packets: 0,
            bytes: 0,
            count: 1,
        }
    }

    fn append(&mut self, records: &[FlowRecord]) -> crate::Result<()> {
        self.store
            .append(records)
            .with_context(|| format!("appending to flow store {}", self.dir.display()))?;
        if self.last_flush.elapsed() >= FLUSH_EVERY {
            self.store.flush()?;
            self.last_flush = Instant::now();
        }
        Ok(())
    }

    /// Fold in the final counters (see the module docs), write the segments
    /// and release the store.
    pub fn finish(mut self, tables: &Tables) -> crate::Result<StoreSummary> {
        let counters = tables.read_counters()?;
        let records = self.counter_records(&counters);
        self.summary.counter_records = records.len() as u64;
        self.store.append(&records)?;
        self.store
            .close()
            .with_context(|| format!("closing flow store {}", self.dir.display()))?;
        Ok(self.summary)
    }

    fn counter_records(&mut self, counters: &[(FlowKey, FlowCounters)]) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for (key, now) in counters {
            if now.last_seen_ns < self.started_mono_ns {
                continue;
            }
            // Same first packet time = the same connection as at the start;
            // otherwise the LRU recycled the key and all of it is new.
            let base = self
                .baseline
                .get(key)
                .filter(|b| b.first_seen_ns == now.first_seen_ns);
            let (base_packets, base_bytes) = base.map_or((0, 0), |b| (b.packets, b.bytes));
            let events = self.events_per_flow.get(key).copied().unwrap_or(0);
            let packets = now
                .packets
                .saturating_sub(base_packets)
                .saturating_sub(events);
            let bytes = now.bytes.saturating_sub(base_bytes);
            let lost_start =
                events == 0 && base.is_none() && now.first_seen_ns >= self.started_mono_ns;
            if packets == 0 && bytes == 0 && !lost_start {
                continue;
            }
            let ev = FlowEvent {
                ts_ns: now.first_seen_ns.max(self.started_mono_ns),
                saddr: key.saddr,
                daddr: key.daddr,
                src_identity: now.src_identity,
                dst_identity: now.dst_identity,
                sport: key.sport,
                dport: key.dport,
                proto: key.proto,
                direction: key.direction,
                verdict: now.verdict,
                reason: now.reason,
                ifindex: key.ifindex,
                rule_id: now.rule_id,
                ns_id: 0,
                pad: 0,
            };
            let mut record =
                FlowRecord::from_event(&ev, &self.inventory, &self.node, self.wall_offset_ns);
            record.window_end_ns = (now.last_seen_ns as i64).saturating_add(self.wall_offset_ns);
            record.packets = packets;
            record.bytes = bytes;
            record.count = u64::from(lost_start);
            self.summary.recovered_connections += u64::from(lost_start);
            out.push(record);
        }
        out
    }
}

/// Ring-buffer drains (and L7 events) the store thread may have queued
/// before the event loop waits for it: ~1M events. While an append
/// fsyncs or waits for a segment, the loop keeps draining the ring.
const QUEUE_DEPTH: usize = 128;

fn unix_ns(ts: SystemTime) -> i64 {
    ts.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn l7_verdict(v: L7Verdict, reason: &str) -> (Verdict, String) {
    match v {
        L7Verdict::Allowed => (Verdict::Forwarded, String::new()),
        L7Verdict::WouldDeny => (Verdict::L7WouldDeny, reason.to_string()),
        L7Verdict::Denied => (Verdict::L7Denied, reason.to_string()),
        L7Verdict::Unparseable => (Verdict::Forwarded, format!("unparseable: {reason}")),
    }
}

enum Message {
    Events(Vec<FlowEvent>),
    L7(Box<L7Event>),
    Dns(Box<DnsEvent>),
    /// The inventory changed: later events resolve against this one.
    Inventory(Box<InventorySnapshot>, String),
}

/// A [`StoreSink`] on its own thread, so that the event loop keeps reading
/// the ring buffer while the store resolves, appends and fsyncs (read and
/// store inline, a 16 MiB ring overflowed at 1M events/s; queued, it did
/// not: `cnpilot bench ingest`). Events queued but not yet appended when
/// the agent is SIGKILLed are lost like events still in the ring; what the
/// store acknowledged is not.
pub struct StoreThread {
    tx: Option<std::sync::mpsc::SyncSender<Message>>,
    handle: Option<std::thread::JoinHandle<crate::Result<StoreSink>>>,
}

impl StoreThread {
    pub fn spawn(sink: StoreSink) -> crate::Result<StoreThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_DEPTH);
        let handle = std::thread::Builder::new()
            .name("cnpilot-store".into())
            .spawn(move || -> crate::Result<StoreSink> {
                let mut sink = sink;
                for message in rx {
                    match message {
                        Message::Events(batch) => sink.record_events(&batch)?,
                        Message::L7(ev) => sink.record_l7(&ev)?,
                        Message::Dns(ev) => sink.record_dns(&ev)?,
                        Message::Inventory(snapshot, node) => {
                            sink.inventory =
                                Inventory::from_snapshot(&without_service_accounts(&snapshot));
                            sink.node = node;
                        }
                    }
                }
                Ok(sink)
            })
            .context("starting the flow store thread")?;
        Ok(StoreThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn send(&mut self, message: Message) -> crate::Result<()> {
        let delivered = self.tx.as_ref().is_some_and(|tx| tx.send(message).is_ok());
        if delivered {
            return Ok(());
        }
        // The thread stopped: its error says why.
        match self.finish_thread() {
            Err(err) => Err(err),
            Ok(_) => crate::error::bail!("the flow store thread stopped"),
        }
    }

    pub fn record_events(&mut self, batch: Vec<FlowEvent>) -> crate::Result<()> {
        self.send(Message::Events(batch))
    }

    pub fn record_l7(&mut self, ev: L7Event) -> crate::Result<()> {
        self.send(Message::L7(Box::new(ev)))
    }

    pub fn record_dns(&mut self, ev: DnsEvent) -> crate::Result<()> {
        self.send(Message::Dns(Box::new(ev)))
    }

    /// Queued behind the events already sent: they resolve with the old one.
    pub fn set_inventory(
        &mut self,
        snapshot: InventorySnapshot,
        node: String,
    ) -> crate::Result<()> {
        self.send(Message::Inventory(Box::new(snapshot), node))
    }

    fn finish_thread(&mut self) -> crate::Result<StoreSink> {
        self.tx = None;
        match self.handle.take() {
            Some(handle) => handle
                .join()
                .map_err(|_| crate::AgentError::invalid("the flow store thread panicked"))?,
            None => crate::error::bail!("the flow store thread already stopped"),
        }
    }

    /// Wait until everything queued is appended; the sink comes back for
    /// [`StoreSink::finish`].
    pub fn join(mut self) -> crate::Result<StoreSink> {
        self.finish_thread()
    }
}

impl Drop for StoreThread {
    /// On an early return, what was queued is still appended (durable)
    /// before the process goes on to exit.
    fn drop(&mut self) {
        if self.handle.is_some() {
            if let Err(err) = self.finish_thread() {
                tracing::warn!(error = %err, "flow store thread");
            }
        }
    }
}

/// Unpin the ring buffer a previous agent left, so this agent's programs
/// get a new one (the attached links are switched to them in place; events
/// the old programs emit meanwhile are lost, their counters are not).
///
/// Why: aya 0.13's `RingBuf` starts with a producer-position cache of 0, so
/// on a reused ring whose consumer position is not 0 it reads past the
/// producer: it spins at 100% CPU decoding stale memory as events. Belongs
/// in `cnpilot_bpf` (reader or loader); done here until it is.
pub fn fresh_event_ring(pin_dir: &Path) {
    let pin = pin_dir.join(cnpilot_bpf::tables::names::EVENTS);
    match std::fs::remove_file(&pin) {
        Ok(()) => tracing::info!(pin = %pin.display(), "unpinned the previous agent's ring buffer"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "could not unpin the old ring buffer")
        }
    }
}

/// The flow key the counters of an event's connection are under.
fn key_of(ev: &FlowEvent) -> FlowKey {
    FlowKey {
        saddr: ev.saddr,
        daddr: ev.daddr,
        sport: ev.sport,
        dport: ev.dport,
        proto: ev.proto,
        direction: ev.direction,
        pad: 0,
        ifindex: ev.ifindex,
    }
}

/// (Unix ns - monotonic ns, monotonic ns) now.
pub fn clock_offset() -> (i64, u64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = ts.tv_sec * 1_000_000_000 + ts.tv_nsec;
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    (wall - mono, mono.max(0) as u64)
}

/// The agent's identities carry no service account label (see the agent's
/// inventory): the store's label sets must be the same ones.
fn without_service_accounts(snapshot: &InventorySnapshot) -> InventorySnapshot {
    let mut snapshot = snapshot.clone();
    for pod in &mut snapshot.pods {
        pod.service_account = None;
    }
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;
    use cnpilot_bpf::maps::verdict;
    use cnpilot_learner::inventory::PodInfo;

    fn sink_for_test(dir: &Path) -> StoreSink {
        let snapshot = InventorySnapshot {
            pods: vec![PodInfo {
                name: "worker-1".into(),
                namespace: "tenant-a".into(),
                node: "n1".into(),
                ips: vec!["198.18.1.2".parse().unwrap()],
                host_network: false,
                labels: [("app".to_string(), "worker".to_string())].into(),
                service_account: None,
                workload: "worker".into(),
                phase: "Running".into(),
                started_ns: Some(0),
                finished_ns: None,
                ports: Vec::new(),
            }],
            namespaces: vec![],
            nodes: vec![],
        };
        StoreSink {
            store: FlowStore::open(dir).unwrap(),
            dir: dir.to_path_buf(),
            inventory: Inventory::from_snapshot(&snapshot),
            node: "n1".into(),
            wall_offset_ns: 1_000,
            started_mono_ns: 100,
            baseline: HashMap::new(),
            events_per_flow: HashMap::new(),
            last_flush: Instant::now(),
            summary: StoreSummary::default(),
        }
    }

    fn event(sport: u16, ts: u64) -> FlowEvent {
        FlowEvent {
            ts_ns: ts,
            saddr: u32::from(std::net::Ipv4Addr::new(198, 18, 1, 2)).to_be(),
            daddr: u32::from(std::net::Ipv4Addr::new(198, 18, 2, 2)).to_be(),
            src_identity: 300,
            dst_identity: 301,
            sport,
            dport: 8080,
            proto: 6,
            direction: 1,
            verdict: verdict::DROPPED,
            reason: 1,
            ifindex: 7,
            rule_id: 0,
            ns_id: 1,
            pad: 0,
        }
    }

    fn counters(packets: u64, bytes: u64, first: u64) -> FlowCounters {
        FlowCounters {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: first + 50,
            src_identity: 300,
            dst_identity: 301,
            verdict: verdict::DROPPED,
            ..Default::default()
        }
    }

    #[test]
    fn events_and_counters_add_up_to_the_counter_deltas_without_double_counting() {
        let dir = tempfile::tempdir().unwrap();
        let mut sink = sink_for_test(dir.path());
        // Connection A: 3 dropped SYNs reported, 5 packets counted.
        // Connection B: its event was lost (ring overflow), 4 packets counted.
        // Connection C: older than the session, 10 packets at the start, 12 now.
        let (a, b, c) = (event(1000, 200), event(1001, 210), event(1002, 50));
        sink.baseline.insert(key_of(&c), counters(10, 1000, 50));
        sink.record_events(&[a, a, a]).unwrap();
        let finals = [
            (key_of(&a), counters(5, 300, 200)),
            (key_of(&b), counters(4, 240, 210)),
            (key_of(&c), counters(12, 1200, 50)),
        ];
        let extra = sink.counter_records(&finals);
        sink.store.append(&extra).unwrap();
        sink.store.flush().unwrap();
        let all = cnpilot_learner::store::read_all(dir.path()).unwrap();
        let sum = |port: u16, f: fn(&FlowRecord) -> u64| -> u64 {
            all.iter()
                .filter(|r| r.src.ip.is_some() && r.dst_port == 8080)
                .filter(|r| {
                    r.window_start_ns
                        == 1_000
                            + match port {
                                1000 => 200,
                                1001 => 210,
                                _ => 100,
                            }
                })
                .map(f)
                .sum()
        };
        assert_eq!(sum(1000, |r| r.packets), 5);
        assert_eq!(sum(1000, |r| r.bytes), 300);
        assert_eq!(sum(1000, |r| r.count), 1, "retransmits are one connection");
        assert_eq!(sum(1001, |r| r.packets), 4);
        assert_eq!(sum(1001, |r| r.count), 1, "the lost event is recovered");
        assert_eq!(sum(1002, |r| r.packets), 2, "only this session's delta");
        assert_eq!(sum(1002, |r| r.bytes), 200);
        assert_eq!(sum(1002, |r| r.count), 0, "its start was not seen");
        let a_rec = all.iter().find(|r| r.count == 1).unwrap();
        assert_eq!(a_rec.src.namespace, "tenant-a");
        assert_eq!(a_rec.src.workload, "worker");
        assert_eq!(a_rec.verdict, Verdict::Dropped);
        assert_eq!(a_rec.node, "n1");
    }
}
