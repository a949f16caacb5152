//! The benchmark's cluster in miniature: client pod A and server pod B, each
//! a netns joined by a veth to a routing "node" netns (one /32 per veth, no
//! bridge), all from 198.18.0.0/15, removed on drop.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

pub struct Topo {
    pub node: String,
    pub pod_a: String,
    pub pod_b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub ifindex_a: u32,
    pub ifindex_b: u32,
    pub pin_dir: PathBuf,
}

pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

impl Topo {
    pub fn build() -> anyhow::Result<Topo> {
        let tag = format!("{:x}", std::process::id());
        let mut topo = Topo {
            node: format!("cnpb-{tag}-node"),
            pod_a: format!("cnpb-{tag}-a"),
            pod_b: format!("cnpb-{tag}-b"),
            veth_a: format!("cnpb{tag}a"),
            veth_b: format!("cnpb{tag}b"),
            ifindex_a: 0,
            ifindex_b: 0,
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/cnpilot-bench-{tag}")),
        };
        for ns in [&topo.node, &topo.pod_a, &topo.pod_b] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &topo.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        // Room for a few seconds of back-to-back connections.
        sh(&[
            "ip",
            "netns",
            "exec",
            &topo.pod_a,
            "sysctl",
            "-qw",
            "net.ipv4.ip_local_port_range=1024 65000",
        ])?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &topo.pod_a,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
        ])?;
        for (pod, veth, addr) in [
            (&topo.pod_a, &topo.veth_a, ADDR_A),
            (&topo.pod_b, &topo.veth_b, ADDR_B),
        ] {
            let node = topo.node.as_str();
            sh(&[
                "ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ])?;
            sh(&[
                "ip",
                "-n",
                node,
                "addr",
                "add",
                &format!("{GATEWAY}/32"),
                "dev",
                veth,
            ])?;
            sh(&["ip", "-n", node, "link", "set", veth, "up"])?;
            sh(&[
                "ip",
                "-n",
                node,
                "route",
                "add",
                &format!("{addr}/32"),
                "dev",
                veth,
            ])?;
            sh(&[
                "ip",
                "-n",
                pod,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "eth0",
            ])?;
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"])?;
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                &format!("{GATEWAY}/32"),
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                "198.18.0.0/15",
                "via",
                &GATEWAY.to_string(),
            ])?;
        }
        let node = cnpilot_bpf::netns::named(&topo.node);
        topo.ifindex_a = cnpilot_bpf::netns::ifindex(&node, &topo.veth_a)?;
        topo.ifindex_b = cnpilot_bpf::netns::ifindex(&node, &topo.veth_b)?;
        Ok(topo)
    }

    pub fn netns(&self, name: &str) -> PathBuf {
        cnpilot_bpf::netns::named(name)
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Err(e) = cnpilot_bpf::unpin_all(&self.pin_dir) {
            eprintln!("cnpilot bench: cleaning {}: {e}", self.pin_dir.display());
        }
        for ns in [&self.pod_a, &self.pod_b, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
