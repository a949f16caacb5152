//! `cnpilot diff` (being written).

use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct DiffArgs {}

pub fn run(_args: DiffArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`cnpilot diff` is not implemented yet")
}
