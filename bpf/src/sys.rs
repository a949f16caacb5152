//! The two host facts every tier asks: are we root, and did a command
//! succeed (with its stderr when it did not). One spelling for the agent,
//! the lab, the benches and the tests.

use std::io::Write;
use std::process::{Command, Stdio};

/// Whether this process runs as root (CAP_BPF and CAP_NET_ADMIN with it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A command that could not run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Runs `program args…` to completion, `stdin` fed to it when given, and
/// returns its stdout; a non-zero exit is [`CommandError::Failed`] with the
/// command line and its stderr.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, CommandError> {
    let cmd = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_err = |source| CommandError::Spawn {
        cmd: cmd.clone(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            cmd,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_names_itself_and_its_stderr() {
        let err = run("sh", &["-c", "echo nope >&2; exit 3"], None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c"), "{text}");
        assert!(text.contains("nope"), "{text}");
        assert_eq!(run("cat", &[], Some("fed\n")).unwrap(), "fed\n");
        assert!(matches!(
            run("/nonexistent/cnpilot-x", &[], None),
            Err(CommandError::Spawn { .. })
        ));
    }
}
