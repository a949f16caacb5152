//! `cargo run -p cnpilot-learner --example learnbench --release -- DIR`:
//! time `aggregate::learn` over a store (wall time; run under
//! `/usr/bin/time -v` for peak RSS).

use std::time::Instant;

use cnpilot_learner::aggregate::{learn, LearnOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: learnbench DIR")?;
    let start = Instant::now();
    let table = learn(&[dir.into()], &LearnOptions::default())?;
    println!(
        "learn: {} records in {} segments -> {} rows in {:.2}s",
        table.scan.rows,
        table.scan.segments,
        table.rows.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
