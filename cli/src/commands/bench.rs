use clap::Subcommand;

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Datapath throughput and connection rate.
    Datapath {},
}

pub fn run(_cmd: BenchCommand) -> anyhow::Result<Outcome> {
    anyhow::bail!("bench is not implemented yet")
}
