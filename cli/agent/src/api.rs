//! The client side of the agent's local socket (the server is
//! `commands::agent::socket`): where it is, one-shot requests, and the
//! event stream.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Context;

/// The socket of the agent on the default pin directory.
pub const DEFAULT_SOCKET: &str = "/run/cnpilot/agent.sock";

/// One agent per pin directory, so one socket per pin directory: the
/// default pins get [`DEFAULT_SOCKET`], others a socket named after theirs
/// (several labs on one machine each have their agent).
pub fn socket_for(pin_dir: &Path) -> PathBuf {
    if pin_dir == Path::new(cnpilot_bpf::DEFAULT_PIN_DIR) {
        return PathBuf::from(DEFAULT_SOCKET);
    }
    let name = pin_dir
        .file_name()
        .map_or_else(|| "pins".into(), |n| n.to_string_lossy().into_owned());
    PathBuf::from(format!("/run/cnpilot/agent-{name}.sock"))
}

fn connect(path: &Path) -> crate::Result<UnixStream> {
    UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to the agent at {} (is `cnpilot agent` running with this pin directory?)",
            path.display()
        )
    })
}

/// `{"op": op}` and its one-line JSON answer.
pub fn request(path: &Path, op: &str) -> crate::Result<serde_json::Value> {
    let mut stream = connect(path)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting a socket timeout")?;
    stream
        .write_all(format!("{{\"op\":\"{op}\"}}\n").as_bytes())
        .with_context(|| format!("writing to {}", path.display()))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .with_context(|| format!("reading the agent's answer on {}", path.display()))?;
    serde_json::from_str(&line).with_context(|| {
        format!(
            "the agent at {} answered `{}`, not JSON",
            path.display(),
            line.trim()
        )
    })
}

/// The agent's event lines from now on, one JSON object per line.
pub fn subscribe(path: &Path) -> crate::Result<BufReader<UnixStream>> {
    let mut stream = connect(path)?;
    stream
        .write_all(b"{\"op\":\"events\"}\n")
        .with_context(|| format!("writing to {}", path.display()))?;
    Ok(BufReader::new(stream))
}

/// Asks the agent to reload its policies (staged proposals included) and
/// returns its summary.
pub fn reload(path: &Path) -> crate::Result<String> {
    let answer = request(path, "reload")?;
    if answer["ok"] == true {
        Ok(answer["summary"].as_str().unwrap_or_default().to_string())
    } else {
        crate::error::bail!(
            "the agent could not reload its policies: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        )
    }
}
