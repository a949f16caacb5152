//! One case's cluster in miniature: a "node" netns routing, with one /32
//! route per veth, between a netns per endpoint and an "outside" netns that
//! holds the stand-in addresses of entities and CIDRs. Named uniquely per
//! case; `Drop` removes every netns and pin, also when the test fails.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use cnpilot_bpf::netns;

/// The node side's address on every veth: the pods' gateway and the local host.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 254);

static NEXT_CASE: AtomicU32 = AtomicU32::new(0);

pub fn in_prefix(a: Ipv4Addr, (net, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(a) & mask == u32::from(net) & mask
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip -n NS -batch -` with one command per line.
pub fn ip_batch(ns: &str, lines: &[String]) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.join("\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} -batch: {lines:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where a flow's end lives in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// Endpoint index in the case.
    Pod(usize),
    /// The local host: the node netns.
    Host,
    /// A stand-in address in the outside netns.
    Outside(Ipv4Addr),
}

/// One case's netns cluster and datapath. Drop removes all of it.
pub struct CaseLab {
    pub node: String,
    pub pods: Vec<String>,
    pub outside: String,
    pub pin_dir: PathBuf,
    built: Vec<String>,
}

impl CaseLab {
    pub fn new(pod_addrs: &[Ipv4Addr], outside_addrs: &[Ipv4Addr]) -> CaseLab {
        let n = NEXT_CASE.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{:x}{n:02x}", std::process::id() & 0xfff);
        let mut lab = CaseLab {
            node: format!("cnpag-{tag}-node"),
            pods: (0..pod_addrs.len())
                .map(|i| format!("cnpag-{tag}-p{i}"))
                .collect(),
            outside: format!("cnpag-{tag}-out"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/cnpilot-agree-{tag}")),
            built: Vec::new(),
        };
        let all: Vec<String> = [lab.node.clone(), lab.outside.clone()]
            .into_iter()
            .chain(lab.pods.iter().cloned())
            .collect();
        for ns in &all {
            sh(&["ip", "netns", "add", ns]);
            lab.built.push(ns.clone());
            ip_batch(ns, &["link set lo up".into()]);
        }
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for (i, addr) in pod_addrs.iter().enumerate() {
            lab.wire(&lab.pods[i].clone(), &format!("cag{tag}p{i}"), &[*addr]);
        }
        if !outside_addrs.is_empty() {
            lab.wire(&lab.outside.clone(), &format!("cag{tag}o"), outside_addrs);
        }
        lab
    }

    /// A veth from the node to `ns` whose far side holds `addrs`.
    fn wire(&self, ns: &str, veth: &str, addrs: &[Ipv4Addr]) {
        let mut node = vec![
            format!("link add {veth} type veth peer name eth0 netns {ns}"),
            format!("addr add {GATEWAY}/32 dev {veth}"),
            format!("link set {veth} up"),
        ];
        let mut far = Vec::new();
        for a in addrs {
            node.push(format!("route add {a}/32 dev {veth}"));
            far.push(format!("addr add {a}/32 dev eth0"));
        }
        far.push("link set eth0 up".into());
        far.push(format!("route add {GATEWAY}/32 dev eth0 scope link"));
        far.push(format!("route add 198.18.0.0/15 via {GATEWAY}"));
        ip_batch(&self.node, &node);
        ip_batch(ns, &far);
    }

    pub fn netns_of(&self, end: End) -> PathBuf {
        netns::named(match end {
            End::Pod(i) => &self.pods[i],
            End::Host => &self.node,
            End::Outside(_) => &self.outside,
        })
    }

    /// The node's link to the outside netns: where the host firewall sits.
    pub fn outside_veth(&self) -> String {
        let tag = self
            .node
            .trim_start_matches("cnpag-")
            .trim_end_matches("-node");
        format!("cag{tag}o")
    }

    pub fn pod_veth(&self, i: usize) -> String {
        // The same name `new` gave it: `cag` + tag + `p` + index.
        let tag = self
            .node
            .trim_start_matches("cnpag-")
            .trim_end_matches("-node");
        format!("cag{tag}p{i}")
    }
}

impl Drop for CaseLab {
    fn drop(&mut self) {
        let _ = cnpilot_bpf::unpin_all(&self.pin_dir);
        for ns in self.built.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
