//! The benchmark's cluster in miniature: client pod A and server pod B, each
//! a netns joined by a veth to a routing "node" netns (one /32 per veth, no
//! bridge), all from 198.18.0.0/15, removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use cnpilot_bpf::testbed::TwoPods;
pub use cnpilot_bpf::testbed::{ADDR_A, ADDR_B};

/// The shared two-pod testbed (`cnpilot_bpf::testbed`), tuned for
/// connection-rate runs.
pub type Topo = TwoPods;

pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    Ok(cnpilot_bpf::testbed::sh(args)?)
}

/// Runs `cmd` in netns `ns`, feeding `input` on stdin.
pub fn sh_in_with_input(ns: &str, cmd: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", cmd.join(" ")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn build() -> anyhow::Result<Topo> {
    let tag = format!("{:x}", std::process::id());
    let topo = TwoPods::build(
        &format!("cnpb-{tag}"),
        &format!("cnpb{tag}"),
        PathBuf::from(format!("/sys/fs/bpf/cnpilot-bench-{tag}")),
    )?;
    // Room for a few seconds of back-to-back connections.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65000",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        sh(&["ip", "netns", "exec", &topo.pod_a, "sysctl", "-qw", setting])?;
    }
    Ok(topo)
}
