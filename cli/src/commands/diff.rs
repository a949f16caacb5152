//! `cnpilot diff`: a thin wrapper over `cnpilot_reports::diff`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use cnpilot_reports::diff;

use crate::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when standard output is a terminal.
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => std::io::stdout().is_terminal(),
        }
    }
}

// The variant's doc comment in main.rs is the one-line about; clap
// lets it replace a struct doc comment, so the long help is here.
const DIFF_LONG_HELP: &str =
    "Every YAML document is parsed and written back with sorted keys, so key
order, quoting, flow vs block style and comments make no difference;
Cilium policies also go through cnpilot's policy model, so `port: 80` and
`port: \"80\"` are the same. Objects are matched by kind, namespace and
name; an object on one side only is shown whole. Hidden entries (such as
`recommend`'s `.cnpilot/` report directory) are skipped.

Exit status, as diff(1): 0 identical, 1 differences, 2 bad input (a YAML
error names file:line).

Example:

  cnpilot diff --current cli/policies/seed --proposed /tmp/proposed";

const DIFF_SHORT_HELP: &str = "Example:

  cnpilot diff --current cli/policies/seed --proposed /tmp/proposed\n\nMore with --help.";

/// Unified diff of current and proposed policy objects, without formatting
/// noise.
#[derive(Debug, Args)]
#[command(after_help = DIFF_SHORT_HELP, after_long_help = DIFF_LONG_HELP)]
pub struct DiffArgs {
    /// Policies applied now: files or directories (repeatable).
    #[arg(long, required = true, value_name = "DIR")]
    current: Vec<PathBuf>,
    /// Policies to apply instead: files or directories (repeatable).
    #[arg(long, required = true, value_name = "DIR")]
    proposed: Vec<PathBuf>,
    /// Colour added lines green and removed lines red.
    #[arg(long, value_enum, default_value = "auto")]
    color: ColorChoice,
    /// Unchanged lines shown around each change.
    #[arg(long, short = 'U', value_name = "N", default_value_t = 3)]
    context: usize,
}

pub fn run(args: DiffArgs) -> anyhow::Result<Outcome> {
    let current = diff::load_documents(&args.current).context("reading --current")?;
    let proposed = diff::load_documents(&args.proposed).context("reading --proposed")?;
    let report = diff::diff(&current, &proposed, args.context)?;
    print!("{}", diff::render(&report, args.color.enabled()));
    Ok(if report.is_empty() {
        Outcome::Success
    } else {
        Outcome::Finding
    })
}
