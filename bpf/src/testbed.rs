//! A two-pod cluster in miniature, shared by the root tests and
//! `cnpilot bench datapath`: pod namespaces A and B, each joined by a veth
//! to a third "node" namespace that routes between them with one /32 route
//! per veth (as Cilium does; no bridge). Addresses come from 198.18.0.0/15.
//! Everything it made is removed on drop, also after a partial build.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::maps::{EndpointValue, IpcacheValue, IPCACHE_F_LOCAL_ENDPOINT};
use crate::{netns, DatapathError, IpcacheEntry, Tables};

pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The node side's address on every veth, the pods' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);
pub const ID_A: u32 = 1001;
pub const ID_B: u32 = 2001;
pub const NS_A: u32 = 1;
pub const NS_B: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error("running {cmd}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("{cmd}: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("looking up {ifname}: {source}")]
    Ifindex {
        ifname: String,
        source: std::io::Error,
    },
}

/// Runs a command to completion; a non-zero exit is an error with its stderr.
pub fn sh(args: &[&str]) -> Result<String, TestbedError> {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TestbedError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TestbedError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct TwoPods {
    pub node: String,
    pub pod_a: String,
    pub pod_b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub ifindex_a: u32,
    pub ifindex_b: u32,
    pub pin_dir: PathBuf,
}

impl TwoPods {
    /// Namespaces `<ns_prefix>-node|-a|-b`, node-side veths `<veth_prefix>a|b`
    /// (keep it under 14 characters), cnpilot's pins under `pin_dir`.
    pub fn build(
        ns_prefix: &str,
        veth_prefix: &str,
        pin_dir: PathBuf,
    ) -> Result<TwoPods, TestbedError> {
        // From here on Drop cleans up whatever part got built.
        let mut pods = TwoPods {
            node: format!("{ns_prefix}-node"),
            pod_a: format!("{ns_prefix}-a"),
            pod_b: format!("{ns_prefix}-b"),
            veth_a: format!("{veth_prefix}a"),
            veth_b: format!("{veth_prefix}b"),
            ifindex_a: 0,
            ifindex_b: 0,
            pin_dir,
        };
        for ns in [&pods.node, &pods.pod_a, &pods.pod_b] {
            sh(&["ip", "netns", "add", ns])?;
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &pods.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])?;
        for (pod, veth, addr) in [
            (&pods.pod_a, &pods.veth_a, ADDR_A),
            (&pods.pod_b, &pods.veth_b, ADDR_B),
        ] {
            let node = pods.node.as_str();
            let gateway = GATEWAY.to_string();
            let gateway_host = format!("{GATEWAY}/32");
            let addr_host = format!("{addr}/32");
            sh(&[
                "ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                "netns", pod,
            ])?;
            sh(&["ip", "-n", node, "addr", "add", &gateway_host, "dev", veth])?;
            sh(&["ip", "-n", node, "link", "set", veth, "up"])?;
            sh(&["ip", "-n", node, "route", "add", &addr_host, "dev", veth])?;
            sh(&["ip", "-n", pod, "addr", "add", &addr_host, "dev", "eth0"])?;
            sh(&["ip", "-n", pod, "link", "set", "eth0", "up"])?;
            sh(&[
                "ip",
                "-n",
                pod,
                "route",
                "add",
                &gateway_host,
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
                &gateway,
            ])?;
        }
        let node = netns::named(&pods.node);
        let ifindex = |ifname: &str| {
            netns::ifindex(&node, ifname).map_err(|source| TestbedError::Ifindex {
                ifname: ifname.to_string(),
                source,
            })
        };
        pods.ifindex_a = ifindex(&pods.veth_a)?;
        pods.ifindex_b = ifindex(&pods.veth_b)?;
        Ok(pods)
    }

    pub fn netns(&self, name: &str) -> PathBuf {
        netns::named(name)
    }

    /// Registers both pods with the datapath: endpoints (pod A in namespace
    /// `NS_A`, B in `NS_B`) and their /32s in the ipcache.
    pub fn register(&self, t: &mut Tables) -> Result<(), DatapathError> {
        for (ifindex, identity, ns_id, addr) in [
            (self.ifindex_a, ID_A, NS_A, ADDR_A),
            (self.ifindex_b, ID_B, NS_B, ADDR_B),
        ] {
            t.upsert_endpoint(
                ifindex,
                EndpointValue {
                    identity,
                    ns_id,
                    addr: u32::from(addr).to_be(),
                    flags: 0,
                },
            )?;
        }
        let local = |addr, identity| IpcacheEntry {
            addr,
            prefix_len: 32,
            value: IpcacheValue {
                identity,
                flags: IPCACHE_F_LOCAL_ENDPOINT,
            },
        };
        t.set_ipcache(&[local(ADDR_A, ID_A), local(ADDR_B, ID_B)])
    }
}

impl Drop for TwoPods {
    fn drop(&mut self) {
        if let Err(e) = crate::unpin_all(&self.pin_dir) {
            tracing::warn!("cleaning {}: {e}", self.pin_dir.display());
        }
        for ns in [&self.pod_a, &self.pod_b, &self.node] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}
