use clap::{Args, Subcommand};

use crate::Outcome;

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Hubble flow exports.
    Hubble {},
}

#[derive(Debug, Args)]
pub struct LearnArgs {}

pub fn run_import(_cmd: ImportCommand) -> anyhow::Result<Outcome> {
    anyhow::bail!("import is not implemented yet")
}

pub fn run_learn(_args: LearnArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("learn is not implemented yet")
}
