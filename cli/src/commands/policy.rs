use clap::Subcommand;

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Parse and validate policy files or directories.
    Check { paths: Vec<std::path::PathBuf> },
}

pub fn run(_cmd: PolicyCommand) -> anyhow::Result<Outcome> {
    anyhow::bail!("policy is not implemented yet")
}
