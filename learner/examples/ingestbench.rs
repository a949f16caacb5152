//! Ingest rate: datapath events into the flow store, as the agent does it.
//!
//! `cargo run -p cnpilot-learner --release --example ingestbench -- N DIR [BATCH]`
//!
//! N synthetic ring-buffer events (`FlowEvent`, the datapath's record
//! layout) between 200 pods of a 20-namespace inventory, in batches of BATCH
//! (default 8192: one ring-buffer drain, one fsynced WAL frame each). Every
//! event is resolved against the inventory when it is ingested
//! (`FlowRecord::from_event`) and appended to a `FlowStore` in DIR, which
//! writes Parquet segments in the background; the clock stops after
//! `close`, when every record is in a segment.
//!
//! Two baselines run in the same process on the same events, so the ratio
//! means something on a noisy machine:
//! - `raw`: the events' bytes appended to a file with one fsync per batch
//!   (what the disk and fsync alone cost: the ceiling for any durable store);
//! - `json-wal`: the same records as one JSON line each plus one fsync per
//!   batch (the first store version's write-ahead file, without Parquet).

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use cnpilot_bpf::maps::FlowEvent;
use cnpilot_learner::synth::BenchCluster;
use cnpilot_learner::{FlowRecord, FlowStore};

// The cnpilot binary's allocator (see cli/src/main.rs); `--system-alloc`
// is not offered: rebuild without these two lines to compare.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NODE: &str = "node-0";

/// Events as the datapath emits them: identities already decided on the
/// packet (from the ipcache the agent programs from the same inventory).
fn events(n: usize, cluster: &BenchCluster) -> Vec<FlowEvent> {
    let identity = |ip: Ipv4Addr| {
        cluster
            .peers
            .iter()
            .find(|(addr, _)| *addr == ip)
            .map_or(2, |(_, id)| *id)
    };
    let mut state = 0x5eed_u64;
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let (sns, swl) = ((state % 20) as u8, ((state >> 8) % 10) as u8);
            let (dns, dwl) = (((state >> 16) % 20) as u8, ((state >> 24) % 10) as u8);
            // One event in ten leaves the cluster (a world peer).
            let daddr = if (state >> 32).is_multiple_of(10) {
                Ipv4Addr::new(198, 19, 0, (state >> 40) as u8)
            } else {
                Ipv4Addr::new(198, 18, dns, dwl + 10)
            };
            let saddr = Ipv4Addr::new(198, 18, sns, swl + 10);
            FlowEvent {
                ts_ns: 1_000_000_000 + i as u64 * 1_000,
                saddr: u32::from(saddr).to_be(),
                daddr: u32::from(daddr).to_be(),
                src_identity: identity(saddr),
                dst_identity: identity(daddr),
                sport: 30_000 + (state >> 48) as u16 % 30_000,
                dport: [8080, 443, 53, 5432][((state >> 44) % 4) as usize],
                proto: 6,
                direction: 1,
                verdict: u8::from((state >> 52).is_multiple_of(20)),
                reason: 0,
                ifindex: 7,
                rule_id: 0,
                ns_id: 0,
                pad: 0,
            }
        })
        .collect()
}

fn event_bytes(ev: &FlowEvent) -> &[u8] {
    // SAFETY: FlowEvent is a #[repr(C)] plain-data mirror of the kernel's
    // ring-buffer record; reading its bytes is what the ring buffer hands us.
    unsafe {
        std::slice::from_raw_parts(
            (ev as *const FlowEvent).cast::<u8>(),
            std::mem::size_of::<FlowEvent>(),
        )
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    n as f64 / secs
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(n), Some(dir)) = (args.first(), args.get(1)) else {
        return Err("usage: ingestbench N DIR [BATCH]".into());
    };
    let n: usize = n.parse()?;
    let batch: usize = args.get(2).map(|b| b.parse()).transpose()?.unwrap_or(8192);
    let dir = Path::new(dir);
    std::fs::create_dir_all(dir)?;
    let cluster = BenchCluster::new();
    let inventory = &cluster.inventory;
    let events = events(n, &cluster);
    let wall_offset = 1_767_225_600_000_000_000i64;

    // Baseline 1: raw event bytes + fsync per batch.
    let raw_path = dir.join("raw-baseline.bin");
    let t = Instant::now();
    {
        let mut file = File::create(&raw_path)?;
        let mut buf = Vec::with_capacity(batch * 48);
        for chunk in events.chunks(batch) {
            buf.clear();
            for ev in chunk {
                buf.extend_from_slice(event_bytes(ev));
            }
            file.write_all(&buf)?;
            file.sync_data()?;
        }
    }
    let raw_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&raw_path)?;

    // Baseline 2: resolve + JSON lines + fsync per batch.
    let json_path = dir.join("json-baseline.log");
    let json_n = n.min(1_000_000);
    let t = Instant::now();
    {
        let mut file = File::create(&json_path)?;
        let mut buf = Vec::new();
        for chunk in events[..json_n].chunks(batch) {
            buf.clear();
            for ev in chunk {
                let record = FlowRecord::from_event(ev, inventory, NODE, wall_offset);
                serde_json::to_writer(&mut buf, &record)?;
                buf.push(b'\n');
            }
            file.write_all(&buf)?;
            file.sync_data()?;
        }
    }
    let json_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&json_path)?;

    // The store.
    let store_dir = dir.join("store");
    let t = Instant::now();
    let mut resolve_secs = 0.0;
    let mut append_secs = 0.0;
    let close_secs;
    {
        let mut store = FlowStore::open(&store_dir)?;
        let mut records = Vec::with_capacity(batch);
        for chunk in events.chunks(batch) {
            let r = Instant::now();
            records.clear();
            records.extend(
                chunk
                    .iter()
                    .map(|ev| FlowRecord::from_event(ev, inventory, NODE, wall_offset)),
            );
            resolve_secs += r.elapsed().as_secs_f64();
            let a = Instant::now();
            store.append(&records)?;
            append_secs += a.elapsed().as_secs_f64();
        }
        let c = Instant::now();
        store.close()?;
        close_secs = c.elapsed().as_secs_f64();
    }
    let store_secs = t.elapsed().as_secs_f64();
    let store_rate = rate(n, store_secs);
    // Nothing dropped: every event is a row of a readable segment.
    let (_, report) = cnpilot_learner::store::scan(std::slice::from_ref(&store_dir), None)?;
    if report.rows != n || !report.skipped.is_empty() {
        return Err(format!(
            "the store holds {} rows in {} segments ({} skipped), expected {n}",
            report.rows,
            report.segments,
            report.skipped.len()
        )
        .into());
    }

    println!("{n} events, batches of {batch}");
    println!(
        "raw bytes + fsync   {:>12.0} events/s  (baseline)",
        rate(n, raw_secs)
    );
    println!(
        "json WAL + fsync    {:>12.0} events/s  {:.3}x of raw  ({json_n} events)",
        rate(json_n, json_secs),
        rate(json_n, json_secs) / rate(n, raw_secs)
    );
    println!(
        "FlowStore           {:>12.0} events/s  {:.3}x of raw  ({:.2}s: resolve {:.2}s, append {:.2}s, close {:.2}s; {} rows in {} Parquet segments)",
        store_rate,
        store_rate / rate(n, raw_secs),
        store_secs,
        resolve_secs,
        append_secs,
        close_secs,
        report.rows,
        report.segments
    );
    Ok(())
}
