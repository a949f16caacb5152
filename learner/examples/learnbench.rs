//! `cargo run -p cnpilot-learner --release --example learnbench -- DIR [--no-baseline]`
//!
//! Times `aggregate::learn` over a store and, in the same run, two
//! baselines on the same segments:
//! - `decode`: the scan alone (every column the aggregation reads, decoded
//!   by polars, nothing aggregated): the floor any aggregation pays;
//! - `groupby`: the first implementation, a polars `group_by` on all raw
//!   keys (`aggregate::groupby::learn_groupby`); its table must equal
//!   `learn`'s, which is checked.
//!
//! Run under `/usr/bin/time -v` for peak RSS (with `--no-baseline` for the
//! RSS of `learn` alone).

use std::time::Instant;

use cnpilot_learner::aggregate::{groupby, learn, LearnOptions};
use cnpilot_learner::store;
use polars::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().ok_or("usage: learnbench DIR [--no-baseline]")?;
    let baseline = args.next().as_deref() != Some("--no-baseline");
    let dirs = [dir.into()];
    let options = LearnOptions::default();

    let start = Instant::now();
    let table = learn(&dirs, &options)?;
    let learn_secs = start.elapsed().as_secs_f64();
    println!(
        "learn:   {} records in {} segments -> {} rows in {:.2}s ({:.1} M records/s)",
        table.scan.rows,
        table.scan.segments,
        table.rows.len(),
        learn_secs,
        table.scan.rows as f64 / learn_secs / 1e6
    );
    if !baseline {
        return Ok(());
    }

    let start = Instant::now();
    let (paths, _) = store::readable_segments(&dirs, None)?;
    let mut decoded = 0;
    for path in &paths {
        decoded += store::lazy_segments(std::slice::from_ref(path))?
            .select([all().as_expr()])
            .collect()?
            .height();
    }
    let decode_secs = start.elapsed().as_secs_f64();
    println!(
        "decode:  {decoded} records, every column, one thread of segments, in {decode_secs:.2}s  (learn = {:.2}x of decode time)",
        learn_secs / decode_secs
    );

    let start = Instant::now();
    let old = groupby::learn_groupby(&dirs, &options)?;
    let old_secs = start.elapsed().as_secs_f64();
    println!(
        "groupby: {} rows in {old_secs:.2}s  (learn is {:.2}x faster; tables {})",
        old.rows.len(),
        old_secs / learn_secs,
        if old.rows == table.rows {
            "identical"
        } else {
            "DIFFER"
        }
    );
    if old.rows != table.rows {
        return Err("the two aggregations disagree".into());
    }
    Ok(())
}
