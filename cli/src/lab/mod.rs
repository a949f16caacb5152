use clap::Subcommand;

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab cluster.
    Up {},
}

pub fn run(_cmd: LabCommand) -> anyhow::Result<Outcome> {
    anyhow::bail!("lab is not implemented yet")
}
