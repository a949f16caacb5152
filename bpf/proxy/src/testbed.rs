//! Just enough network-namespace plumbing to run the proxy for real without
//! the lab: client namespaces -> a routing `node` namespace -> a server
//! namespace, with an nft `tproxy` rule inside the node namespace only.
//! Used by the bench and the root tests; addresses from 198.18.0.0/15.
//! Test scaffolding: built with the `testbed` feature only.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use super::listener::ProxyError;

/// Packet mark the tproxy rule sets; routed locally by `ip rule` in the node.
pub const TPROXY_MARK: u32 = 0x200;
const TPROXY_TABLE: u32 = 200;

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), ProxyError> {
    cnpilot_bpf::sys::run(program, args, stdin)
        .map(drop)
        .map_err(|e| ProxyError::Setup(e.to_string()))
}

/// Client namespaces `clients[i]` (198.18.{10+i}.2), a node namespace that
/// routes, a server namespace (198.18.20.2). Removed on drop.
#[derive(Debug)]
pub struct L7Lab {
    pub node: String,
    pub server: String,
    pub server_ip: Ipv4Addr,
    pub clients: Vec<(String, Ipv4Addr)>,
    created: Vec<String>,
}

impl L7Lab {
    pub fn create(tag: &str, clients: usize) -> Result<Self, ProxyError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let base = format!(
            "cnl7-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            node: format!("{base}-node"),
            server: format!("{base}-srv"),
            server_ip: Ipv4Addr::new(198, 18, 20, 2),
            clients: (0..clients)
                .map(|i| {
                    (
                        format!("{base}-c{i}"),
                        Ipv4Addr::new(198, 18, 10 + i as u8, 2),
                    )
                })
                .collect(),
            created: Vec::new(),
        };
        let names: Vec<String> = std::iter::once(lab.node.clone())
            .chain(std::iter::once(lab.server.clone()))
            .chain(lab.clients.iter().map(|(n, _)| n.clone()))
            .collect();
        for ns in names {
            run("ip", &["netns", "add", &ns], None)?;
            lab.created.push(ns.clone());
            run("ip", &["-n", &ns, "link", "set", "lo", "up"], None)?;
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                &lab.node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
            None,
        )?;
        lab.link("srv", &lab.server.clone(), 20)?;
        for (i, (ns, _)) in lab.clients.clone().iter().enumerate() {
            lab.link(&format!("c{i}"), ns, 10 + i as u8)?;
        }
        Ok(lab)
    }

    /// A veth `node_side` (node, 198.18.N.1/24) <-> `eth0` (peer, .2/24).
    fn link(&self, node_side: &str, peer: &str, subnet: u8) -> Result<(), ProxyError> {
        run(
            "ip",
            &[
                "link", "add", node_side, "netns", &self.node, "type", "veth", "peer", "name",
                "eth0", "netns", peer,
            ],
            None,
        )?;
        let node_addr = format!("198.18.{subnet}.1/24");
        let peer_addr = format!("198.18.{subnet}.2/24");
        let gateway = format!("198.18.{subnet}.1");
        run(
            "ip",
            &[
                "-n", &self.node, "addr", "add", &node_addr, "dev", node_side,
            ],
            None,
        )?;
        run(
            "ip",
            &["-n", &self.node, "link", "set", node_side, "up"],
            None,
        )?;
        run(
            "ip",
            &["-n", peer, "addr", "add", &peer_addr, "dev", "eth0"],
            None,
        )?;
        run("ip", &["-n", peer, "link", "set", "eth0", "up"], None)?;
        run(
            "ip",
            &["-n", peer, "route", "add", "default", "via", &gateway],
            None,
        )
    }

    /// Inside the node namespace only: TCP to `dport` arriving from a client
    /// link is marked and handed by `tproxy` to the proxy's `proxy_port`;
    /// the mark's route table delivers it locally.
    pub fn redirect_to_proxy(&self, dport: u16, proxy_port: u16) -> Result<(), ProxyError> {
        let mark = format!("{TPROXY_MARK:#x}");
        let table = TPROXY_TABLE.to_string();
        run(
            "ip",
            &[
                "-n", &self.node, "rule", "add", "fwmark", &mark, "lookup", &table,
            ],
            None,
        )?;
        run(
            "ip",
            &[
                "-n",
                &self.node,
                "route",
                "add",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &table,
            ],
            None,
        )?;
        let rules = format!(
            "table ip cnpilot_l7 {{\n chain pre {{\n  type filter hook prerouting priority mangle; policy accept;\n  iifname != \"srv\" tcp dport {dport} meta mark set {mark} tproxy to :{proxy_port} accept\n }}\n}}\n"
        );
        run(
            "ip",
            &["netns", "exec", &self.node, "nft", "-f", "-"],
            Some(&rules),
        )
    }
}

impl Drop for L7Lab {
    fn drop(&mut self) {
        // Deleting a namespace removes its veths (and their peers) too.
        for ns in self.created.iter().rev() {
            let _ = run("ip", &["netns", "del", ns], None);
        }
    }
}
