//! `cnpilot explain` (being written).

use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct ExplainArgs {}

pub fn run(_args: ExplainArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`cnpilot explain` is not implemented yet")
}
