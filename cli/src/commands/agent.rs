use clap::Args;

use crate::Outcome;

#[derive(Debug, Args)]
pub struct AgentArgs {}

#[derive(Debug, Args)]
pub struct ModeArgs {}

#[derive(Debug, Args)]
pub struct RecordArgs {}

pub fn run_agent(_args: AgentArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("agent is not implemented yet")
}

pub fn run_mode(_args: ModeArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("mode is not implemented yet")
}

pub fn run_record(_args: RecordArgs) -> anyhow::Result<Outcome> {
    anyhow::bail!("record is not implemented yet")
}
