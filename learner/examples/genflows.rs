//! Synthetic flows into a store, and the ingest rate.
//!
//! `cargo run -p cnpilot-learner --example genflows --release -- N DIR [BATCH]`
//! appends N synthetic records to the flow store at DIR in batches of BATCH
//! (default 65536; each batch is one fsync of the write-ahead file, as one
//! drain of the ring buffer would be) and prints records/s.

use std::time::Instant;

// The cnpilot binary's allocator (see cli/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cnpilot_learner::synth::{SynthConfig, SynthFlows};
use cnpilot_learner::FlowStore;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(n), Some(dir)) = (args.first(), args.get(1)) else {
        return Err("usage: genflows N DIR [BATCH]".into());
    };
    let n: usize = n.parse()?;
    let batch: usize = args
        .get(2)
        .map(|b| b.parse())
        .transpose()?
        .unwrap_or(65_536);
    let mut flows = SynthFlows::new(SynthConfig::default());
    let mut store = FlowStore::open(dir)?;
    let start = Instant::now();
    let mut gen_time = std::time::Duration::ZERO;
    let mut done = 0;
    while done < n {
        let t = Instant::now();
        let chunk: Vec<_> = (&mut flows).take(batch.min(n - done)).collect();
        gen_time += t.elapsed();
        store.append(&chunk)?;
        done += chunk.len();
    }
    store.close()?;
    let total = start.elapsed();
    let ingest = total - gen_time;
    println!(
        "{n} records in {:.2}s ({:.0} records/s ingest, excluding {:.2}s of generation)",
        total.as_secs_f64(),
        n as f64 / ingest.as_secs_f64(),
        gen_time.as_secs_f64()
    );
    Ok(())
}
