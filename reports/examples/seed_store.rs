//! Write the article's cluster traffic into a flow store, to try `review`,
//! `explain` and `recommend` without a lab:
//!
//! ```sh
//! cargo run -q -p cnpilot-reports --example seed_store -- /tmp/seed-store
//! ```

fn main() -> std::process::ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: seed_store DIR");
        return std::process::ExitCode::from(2);
    };
    match cnpilot_reports::fixture::write_seed_store(std::path::Path::new(&dir)) {
        Ok(()) => {
            println!(
                "wrote {} seed flows to {dir}",
                cnpilot_reports::fixture::seed_records().len()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seed_store: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
