use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("demo is not implemented yet")
}
