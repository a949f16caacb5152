use std::process::ExitCode;

/// How a command that ran to completion ended. Failures to run are
/// `Err(anyhow::Error)` and exit 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: a finding that should stop a script (a failing case, would-drops).
    Finding,
}

impl Outcome {
    pub fn exit_code(self) -> ExitCode {
        match self {
            Outcome::Success => ExitCode::SUCCESS,
            Outcome::Finding => ExitCode::from(1),
        }
    }
}
