//! `cnpilot review` (being written).

use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct ReviewArgs {}

pub fn run(_args: ReviewArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`cnpilot review` is not implemented yet")
}
