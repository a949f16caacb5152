//! `cnpilot recommend` (being written).

use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct RecommendArgs {}

pub fn run(_args: RecommendArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("`cnpilot recommend` is not implemented yet")
}
