//! The host firewall's side of the agent: which of the node's own devices
//! the programs go on, and the mode key of the node.
//!
//! A node device is one the node routes anything but a single local pod
//! through: a device with a network or default route (the uplink), or with
//! a /32 route to another node (a link to it). Pods' veths carry only
//! their pod's /32 and are never host devices. Cilium's own device
//! detection differs (it skips veths, and knows its tunnel devices); a
//! node whose layout this rule misreads takes `--host-firewall DEVICES`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::Context;
use crate::inventory::{ns_id, proc_routes, Inventory, OWN_NETNS};

/// Which node devices the host firewall attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostFirewall {
    /// None: the node's own traffic is neither observed nor enforced.
    Off,
    /// The devices found from the node's routes (see the module).
    Auto,
    /// Exactly these devices.
    Devices(Vec<String>),
}

impl std::str::FromStr for HostFirewall {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" => Ok(HostFirewall::Off),
            "auto" => Ok(HostFirewall::Auto),
            list => {
                let devices: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(str::to_string)
                    .collect();
                if devices.is_empty() || devices.iter().any(|d| d.len() > 15 || d.contains('/')) {
                    return Err(format!(
                        "`{text}`: expected off, auto, or a comma-separated list of interface names (e.g. eth0,eth1)"
                    ));
                }
                Ok(HostFirewall::Devices(devices))
            }
        }
    }
}

/// One node device the programs are attached to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostDevice {
    pub name: String,
    pub ifindex: u32,
}

/// The `ns_mode` key of a node's host endpoint: the node's name under a
/// prefix no namespace name can have (`:` is not allowed in one).
pub fn host_mode_id(node: &str) -> u32 {
    ns_id(&format!("node:{node}"))
}

/// Devices with a route that is not a single-address route, and devices
/// with a /32 route to one of `other_nodes`, from `/proc/net/route` text.
pub fn devices_from_routes(text: &str, other_nodes: &[Ipv4Addr]) -> BTreeSet<String> {
    proc_routes(text)
        .filter(|(iface, dest, mask)| {
            *iface != "lo" && (*mask != u32::MAX || other_nodes.contains(dest))
        })
        .map(|(iface, _, _)| iface.to_string())
        .collect()
}

/// The node devices for `setting`, with their interface indexes in the
/// node's namespace. A named device that does not exist is an error (a
/// typo must not leave the node unfirewalled without a word).
pub fn devices(setting: &HostFirewall, inv: &Inventory) -> crate::Result<Vec<HostDevice>> {
    let other_nodes = inv.remote_nodes.clone();
    let setting = setting.clone();
    let find = move || -> crate::Result<Vec<HostDevice>> {
        let names: BTreeSet<String> = match &setting {
            HostFirewall::Off => return Ok(Vec::new()),
            HostFirewall::Auto => {
                let text = std::fs::read_to_string("/proc/thread-self/net/route")
                    .context("reading the node's routes")?;
                devices_from_routes(&text, &other_nodes)
            }
            HostFirewall::Devices(list) => list.iter().cloned().collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let index = std::ffi::CString::new(name.clone())
                .ok()
                // SAFETY: a valid NUL-terminated name; the call only reads it.
                .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) })
                .unwrap_or(0);
            match (index, &setting) {
                (0, HostFirewall::Devices(_)) => crate::error::bail!(
                    "--host-firewall: no interface `{name}` in the node's network namespace"
                ),
                (0, _) => continue, // gone between the read and now
                (ifindex, _) => out.push(HostDevice { name, ifindex }),
            }
        }
        Ok(out)
    };
    if inv.node_netns == Path::new(OWN_NETNS) {
        find()
    } else {
        cnpilot_bpf::netns::run_in(&inv.node_netns, find)
            .with_context(|| format!("entering {}", inv.node_netns.display()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uplink_and_node_links_are_host_devices_and_pod_veths_are_not() {
        // The seed lab's node: world /16 on the uplink, a pod /32 on a veth,
        // another node's /32 and its pods' /32s on the link to it.
        let text =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                    labup0\t000013C6\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                    labv1a2b\t0A0112C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    labn2\t02FF12C6\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    labn2\t0B0212C6\t02FF12C6\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                    lo\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        let other_nodes = [Ipv4Addr::new(198, 18, 255, 2)];
        let found = devices_from_routes(text, &other_nodes);
        assert_eq!(
            found.into_iter().collect::<Vec<_>>(),
            vec!["labn2".to_string(), "labup0".to_string()]
        );
        // Without the other node known, its link is only pod-like /32s.
        assert_eq!(
            devices_from_routes(text, &[])
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["labup0".to_string()]
        );
    }

    #[test]
    fn the_setting_parses_and_rejects_what_cannot_be_an_interface() {
        assert_eq!("off".parse(), Ok(HostFirewall::Off));
        assert_eq!("auto".parse(), Ok(HostFirewall::Auto));
        assert_eq!(
            "eth0, eth1".parse(),
            Ok(HostFirewall::Devices(vec!["eth0".into(), "eth1".into()]))
        );
        assert!(",".parse::<HostFirewall>().is_err());
        assert!("a-name-longer-than-15".parse::<HostFirewall>().is_err());
        assert_ne!(host_mode_id("node-1"), ns_id("node-1"));
    }
}
