//! `cnpilot bench ingest`: a real BPF ring buffer, under a known load, read
//! and written into the flow store the way the agent does it.
//!
//! The producer is `bpf/c/ringbench.bpf.c`: one datapath-layout event per
//! system call of a producer thread that calls getppid, paced to `--rate`
//! (0 = as fast as it can). The same load runs three times in one process: once
//! with a consumer that only reads the ring (the baseline: what the ring
//! buffer itself delivers on this machine while a producer shares its two
//! cores), then twice resolving every event against the inventory
//! (`FlowRecord::from_event`) and appending it to a `FlowStore` in batches
//! of up to 8,192 (one fsynced WAL frame each): inline in the reading
//! thread, and queued to a store thread as the agent does. Ring-full
//! reservations are counted in the kernel: drops are measured, not
//! inferred.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use cnpilot_bpf::maps::FlowEvent;
use cnpilot_bpf::ringbench::RingBench;
use cnpilot_learner::synth::BenchCluster;
use cnpilot_learner::{store, FlowRecord, FlowStore};
use serde::Serialize;

use super::Format;
use crate::Outcome;

/// Events per store append: the agent appends one ring-buffer drain at a time.
const BATCH: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    ReadOnly,
    /// Drain, resolve, append, then drain again (the ring fills while an
    /// append fsyncs or waits for a segment): the agent's first design.
    Store,
    /// The agent's design: the reader drains the ring into a bounded queue
    /// (up to `QUEUE_BATCHES` drains) that a store thread resolves and
    /// appends (`agent::store::StoreThread`).
    QueuedStore,
}

/// Drains the queued consumer may hold before the reader waits (~1M events).
const QUEUE_BATCHES: usize = 128;

#[derive(Debug, Serialize)]
pub struct IngestRow {
    consumer: &'static str,
    target_per_s: u64,
    seconds: f64,
    /// Events the producer attempted (kernel counter).
    attempted: u64,
    /// Reservations that failed because the ring was full (kernel counter).
    ring_full: u64,
    ring_buffer_mib: u32,
    /// Events read from the ring.
    delivered: u64,
    /// Rows in the store's Parquet segments after close.
    stored: Option<usize>,
    events_per_s: f64,
    ratio_to_read_only: f64,
}

/// Calls getppid (one event each) at `rate` per second until `stop`.
fn produce(rate: u64, stop: &AtomicBool) {
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = if rate == 0 {
            sent + 1024
        } else {
            (start.elapsed().as_secs_f64() * rate as f64) as u64
        };
        if sent < due {
            for _ in 0..(due - sent).min(4096) {
                // SAFETY: getppid has no arguments and cannot fail.
                unsafe { libc::getppid() };
                sent += 1;
            }
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Resolves events against the inventory and appends them.
struct StoreWorker {
    store: FlowStore,
    inventory: cnpilot_learner::Inventory,
    node: String,
    offset: i64,
    records: Vec<FlowRecord>,
}

impl StoreWorker {
    fn open(dir: &Path, cluster: &BenchCluster, offset: i64) -> anyhow::Result<StoreWorker> {
        Ok(StoreWorker {
            store: FlowStore::open(dir)
                .with_context(|| format!("opening flow store {}", dir.display()))?,
            inventory: cluster.inventory.clone(),
            node: cluster.node.clone(),
            offset,
            records: Vec::with_capacity(BATCH),
        })
    }

    fn append(&mut self, events: &[FlowEvent]) -> anyhow::Result<()> {
        self.records.clear();
        for ev in events {
            let record = FlowRecord::from_event(ev, &self.inventory, &self.node, self.offset);
            self.records.push(record);
        }
        self.store.append(&self.records)?;
        Ok(())
    }
}

enum Sink {
    ReadOnly,
    Inline(Box<StoreWorker>),
    Queued(
        mpsc::SyncSender<Vec<FlowEvent>>,
        std::thread::JoinHandle<anyhow::Result<StoreWorker>>,
    ),
}

fn run_one(
    consumer: Consumer,
    cluster: &BenchCluster,
    seconds: f64,
    rate: u64,
    ring_mib: u32,
    store_dir: &Path,
) -> anyhow::Result<IngestRow> {
    let mut bench = RingBench::load(&cluster.peers, ring_mib << 20)
        .context("loading the ring-buffer producer (needs root and BPF)")?;
    let stop = Arc::new(AtomicBool::new(false));
    let go = Arc::new(Barrier::new(2));
    let (tid_tx, tid_rx) = mpsc::channel();
    let producer = {
        let (stop, go) = (stop.clone(), go.clone());
        std::thread::Builder::new()
            .name("ringbench-producer".into())
            .spawn(move || {
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() } as u32;
                if tid_tx.send(tid).is_ok() {
                    go.wait();
                    produce(rate, &stop);
                }
            })?
    };
    let tid = tid_rx.recv().context("the producer thread did not start")?;
    bench.start(tid)?;
    // Unix ns minus the clock of `bpf_ktime_get_ns`, as the agent takes it.
    let (offset, _) = cnpilot_agent::store::clock_offset();
    let duration = Duration::from_secs_f64(seconds);
    let mut events: Vec<FlowEvent> = Vec::with_capacity(BATCH);
    let mut delivered: u64 = 0;
    let mut sink = match consumer {
        Consumer::ReadOnly => Sink::ReadOnly,
        Consumer::Store => Sink::Inline(Box::new(StoreWorker::open(store_dir, cluster, offset)?)),
        Consumer::QueuedStore => {
            let (tx, rx) = mpsc::sync_channel::<Vec<FlowEvent>>(QUEUE_BATCHES);
            let mut worker = StoreWorker::open(store_dir, cluster, offset)?;
            let handle = std::thread::Builder::new()
                .name("ringbench-store".into())
                .spawn(move || -> anyhow::Result<StoreWorker> {
                    for batch in rx {
                        worker.append(&batch)?;
                    }
                    Ok(worker)
                })?;
            Sink::Queued(tx, handle)
        }
    };
    let mut consume = |events: &mut Vec<FlowEvent>| -> anyhow::Result<()> {
        delivered += events.len() as u64;
        match &mut sink {
            Sink::ReadOnly => {}
            Sink::Inline(worker) => worker.append(events)?,
            Sink::Queued(tx, _) => {
                let batch = std::mem::replace(events, Vec::with_capacity(BATCH));
                tx.send(batch)
                    .map_err(|_| anyhow::anyhow!("the store thread stopped"))?;
            }
        }
        Ok(())
    };
    go.wait();
    let start = Instant::now();
    while start.elapsed() < duration {
        events.clear();
        if bench.drain_into(&mut events, BATCH) == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        consume(&mut events)?;
    }
    stop.store(true, Ordering::Relaxed);
    let joined = producer.join();
    bench.stop()?;
    if joined.is_err() {
        anyhow::bail!("the producer thread panicked");
    }
    // Every event of the joined producer is in the ring now.
    loop {
        events.clear();
        if bench.drain_into(&mut events, BATCH) == 0 {
            break;
        }
        consume(&mut events)?;
    }
    let worker = match sink {
        Sink::ReadOnly => None,
        Sink::Inline(worker) => Some(*worker),
        Sink::Queued(tx, handle) => {
            drop(tx);
            let joined = handle
                .join()
                .map_err(|_| anyhow::anyhow!("the store thread panicked"))?;
            Some(joined?)
        }
    };
    let stored = match worker {
        Some(worker) => {
            worker.store.close()?;
            let (_, report) = store::scan(&[store_dir.to_path_buf()], None)?;
            Some(report.rows)
        }
        None => None,
    };
    let elapsed = start.elapsed().as_secs_f64();
    let (attempted, ring_full) = bench.stats()?;
    Ok(IngestRow {
        consumer: match consumer {
            Consumer::ReadOnly => "ring buffer, read only",
            Consumer::Store => "inline: drain, then store",
            Consumer::QueuedStore => "queued store thread (agent)",
        },
        target_per_s: rate,
        seconds: elapsed,
        attempted,
        ring_full,
        ring_buffer_mib: ring_mib,
        delivered,
        stored,
        events_per_s: delivered as f64 / elapsed,
        ratio_to_read_only: 1.0,
    })
}

pub fn run_ingest(
    seconds: f64,
    rate: u64,
    ring_mib: u32,
    output: Format,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        seconds > 0.0 && seconds.is_finite(),
        "--seconds must be a positive number"
    );
    let cluster = BenchCluster::new();
    let store_dir: PathBuf =
        std::env::temp_dir().join(format!("cnpilot-bench-ingest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&store_dir);
    eprintln!("cnpilot bench: ring buffer, read only ...");
    let read_only = run_one(
        Consumer::ReadOnly,
        &cluster,
        seconds,
        rate,
        ring_mib,
        &store_dir,
    )?;
    let mut rows = vec![read_only];
    for consumer in [Consumer::Store, Consumer::QueuedStore] {
        eprintln!("cnpilot bench: {consumer:?} ...");
        let result = run_one(consumer, &cluster, seconds, rate, ring_mib, &store_dir);
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut row = result?;
        row.ratio_to_read_only = row.events_per_s / rows[0].events_per_s.max(f64::MIN_POSITIVE);
        rows.push(row);
    }
    let lossless =
        |row: &IngestRow| row.ring_full == 0 && row.stored == Some(row.delivered as usize);
    match output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => {
            let target = if rate == 0 {
                "as fast as the producer can".to_string()
            } else {
                format!("{rate} events/s")
            };
            println!(
                "producer: {target}, {seconds} s; ring buffer {ring_mib} MiB, batches of up to {BATCH}"
            );
            println!(
                "{:<28} {:>11} {:>10} {:>11} {:>11} {:>14} {:>7}",
                "CONSUMER", "ATTEMPTED", "RING FULL", "DELIVERED", "STORED", "EVENTS/S", "RATIO"
            );
            for row in &rows {
                println!(
                    "{:<28} {:>11} {:>10} {:>11} {:>11} {:>14.0} {:>6.2}x",
                    row.consumer,
                    row.attempted,
                    row.ring_full,
                    row.delivered,
                    row.stored.map_or("-".to_string(), |n| n.to_string()),
                    row.events_per_s,
                    row.ratio_to_read_only
                );
            }
            for row in rows.iter().skip(1).filter(|r| !lossless(r)) {
                println!(
                    "{}: did not keep up ({} events lost at the ring buffer, {} read but not stored)",
                    row.consumer,
                    row.ring_full,
                    row.delivered as usize - row.stored.unwrap_or(0).min(row.delivered as usize)
                );
            }
        }
    }
    Ok(if rows.iter().skip(1).all(lossless) {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}
