//! What each row of `cnpilot bench datapath` configures: the cnpilot maps
//! (policy entries, ipcache prefixes, modes), iptables rules and the nft set,
//! all inside the benchmark's own namespaces.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use cnpilot_bpf::maps::*;
use cnpilot_bpf::testbed::{GATEWAY, ID_A, ID_B};
use cnpilot_bpf::{HostPath, IpcacheEntry, Mode};

use super::measure::IPERF_PORT;
use super::topo::{sh_in_with_input, Topo, ADDR_A, ADDR_B};

/// One row's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    NoProgram,
    Cnpilot {
        mode: Mode,
        policy_entries: usize,
        ipcache_prefixes: usize,
        /// The programs of `--compare-object` instead of this build's.
        other_object: bool,
        /// The host firewall on (`host_firewall`): the host's entry for
        /// the host <-> local pod path, its mode and its subjects.
        host_firewall: bool,
    },
    Iptables {
        rules: usize,
    },
    NftSet {
        elements: usize,
    },
}

/// A row: its name, short id for `--rows`, configuration, and the row its
/// extra ratio is taken against (the same scenario with less state).
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    pub id: &'static str,
    pub name: &'static str,
    pub scenario: Scenario,
    pub compare_to: Option<&'static str>,
}

const fn cnpilot(mode: Mode, policy_entries: usize, ipcache_prefixes: usize) -> Scenario {
    Scenario::Cnpilot {
        mode,
        policy_entries,
        ipcache_prefixes,
        other_object: false,
        host_firewall: false,
    }
}

const fn other_object(mode: Mode) -> Scenario {
    Scenario::Cnpilot {
        mode,
        policy_entries: 10,
        ipcache_prefixes: 10,
        other_object: true,
        host_firewall: false,
    }
}

/// Every row, in the order each round measures them. The first is the
/// baseline of every ratio. The `-other` rows run only with
/// `--compare-object`.
pub const ROWS: [RowSpec; 11] = [
    RowSpec {
        id: "none",
        name: "no program",
        scenario: Scenario::NoProgram,
        compare_to: None,
    },
    RowSpec {
        id: "audit-other",
        name: "--compare-object audit (10 entries)",
        scenario: other_object(Mode::Audit),
        compare_to: None,
    },
    RowSpec {
        id: "audit",
        name: "cnpilot audit (10 entries)",
        scenario: cnpilot(Mode::Audit, 10, 10),
        compare_to: None,
    },
    RowSpec {
        id: "enforce-other",
        name: "--compare-object enforce (10 entries)",
        scenario: other_object(Mode::Enforce),
        compare_to: None,
    },
    RowSpec {
        id: "enforce",
        name: "cnpilot enforce (10 entries)",
        scenario: cnpilot(Mode::Enforce, 10, 10),
        compare_to: None,
    },
    RowSpec {
        id: "enforce-hostfw",
        name: "cnpilot enforce + host firewall (10 entries)",
        scenario: Scenario::Cnpilot {
            mode: Mode::Enforce,
            policy_entries: 10,
            ipcache_prefixes: 10,
            other_object: false,
            host_firewall: true,
        },
        compare_to: Some("enforce"),
    },
    RowSpec {
        id: "enforce-10k-policy",
        name: "cnpilot enforce (10,000 entries)",
        scenario: cnpilot(Mode::Enforce, 10_000, 10),
        compare_to: Some("enforce"),
    },
    RowSpec {
        id: "enforce-10k-ipcache",
        name: "cnpilot enforce (10,000 prefixes)",
        scenario: cnpilot(Mode::Enforce, 10, 10_000),
        compare_to: Some("enforce"),
    },
    RowSpec {
        id: "iptables-10",
        name: "iptables (10 INPUT rules)",
        scenario: Scenario::Iptables { rules: 10 },
        compare_to: None,
    },
    RowSpec {
        id: "iptables-10k",
        name: "iptables (10,000 INPUT rules)",
        scenario: Scenario::Iptables { rules: 10_000 },
        compare_to: Some("iptables-10"),
    },
    RowSpec {
        id: "nft-10k",
        name: "nft set (10,000 elements)",
        scenario: Scenario::NftSet { elements: 10_000 },
        compare_to: None,
    },
];

/// The rows named by `--rows` (ids, comma-separated; empty = all), plus the
/// baseline and every row one of them is compared to, in [`ROWS`] order.
/// With `other_object` (`--compare-object`) the audit and enforce rows are
/// compared to the same rows run by the other object's programs.
pub fn select(ids: &[String], other_object: bool) -> anyhow::Result<Vec<RowSpec>> {
    let is_other = |r: &RowSpec| {
        matches!(
            r.scenario,
            Scenario::Cnpilot {
                other_object: true,
                ..
            }
        )
    };
    let mut wanted: HashSet<&str> = HashSet::from([ROWS[0].id]);
    if ids.is_empty() {
        wanted.extend(ROWS.iter().filter(|r| !is_other(r)).map(|r| r.id));
    }
    for id in ids {
        let Some(row) = ROWS.iter().find(|r| r.id == id && !is_other(r)) else {
            let known: Vec<&str> = ROWS.iter().filter(|r| !is_other(r)).map(|r| r.id).collect();
            anyhow::bail!("unknown row `{id}` (rows: {})", known.join(", "));
        };
        wanted.insert(row.id);
        if let Some(base) = row.compare_to {
            wanted.insert(base);
        }
    }
    let mut rows: Vec<RowSpec> = Vec::new();
    for row in ROWS
        .iter()
        .filter(|r| !is_other(r) && wanted.contains(r.id))
    {
        let mut row = *row;
        let other = ROWS
            .iter()
            .find(|o| is_other(o) && o.id.strip_suffix("-other") == Some(row.id));
        if let (true, Some(other)) = (other_object, other) {
            rows.push(*other);
            row.compare_to = Some(other.id);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Both pods default-deny in both directions: every flow is evaluated at
/// both veths, and at the client's also for the server's ingress (the L7
/// hand-over check for local destinations).
pub fn subjects() -> impl Iterator<Item = (SubjectKey, SubjectValue)> {
    [
        (ID_A, Direction::Egress),
        (ID_A, Direction::Ingress),
        (ID_B, Direction::Egress),
        (ID_B, Direction::Ingress),
    ]
    .into_iter()
    .map(|(identity, d)| {
        (
            SubjectKey {
                identity,
                direction: d as u32,
            },
            SubjectValue {
                flags: SUBJECT_F_DEFAULT_DENY,
            },
        )
    })
}

/// The node's `ns_mode` key in the benchmark (no pod namespace's).
pub const HOST_NS: u32 = 0xFFFF_FF00;

/// The host firewall as the agent programs it, for the benchmark's node:
/// the host's entry (its address is the pods' gateway), and the host
/// default-deny both ways, so that a host <-> pod flow would be judged by
/// it. The benchmark's flows are pod to pod: what they pay for it is what
/// the host firewall costs pod traffic at the veths.
pub fn host_firewall() -> (HostPath, [(SubjectKey, SubjectValue); 2]) {
    let host = HostPath {
        identity: identity::HOST,
        ns_id: HOST_NS,
        addr: GATEWAY,
    };
    let deny = |d: Direction| {
        (
            SubjectKey {
                identity: identity::HOST,
                direction: d as u32,
            },
            SubjectValue {
                flags: SUBJECT_F_DEFAULT_DENY,
            },
        )
    };
    (host, [deny(Direction::Egress), deny(Direction::Ingress)])
}

/// `n` entries: the ones the benchmark's flows need (A -> B, TCP to any
/// port: iperf3 and the connect loop's ports; UDP for the flood; both
/// directions) plus filler for other peers. An any-port entry costs the
/// same lookups as an exact one: every probe of the sequence is made anyway
/// (a deny in a later one would win).
pub fn policy_entries(n: usize) -> Vec<(PolicyKey, PolicyValue)> {
    let allow = |rule_id| PolicyValue {
        action: action::ALLOW,
        pad: 0,
        proxy_port: 0,
        rule_id,
    };
    let key = |subject, peer, proto, dport, d: Direction| PolicyKey {
        subject,
        peer,
        dport,
        proto,
        direction: d as u8,
    };
    let mut v = vec![
        (key(ID_A, ID_B, 6, 0, Direction::Egress), allow(1)),
        (key(ID_A, ID_B, 17, 0, Direction::Egress), allow(1)),
        (key(ID_B, ID_A, 6, 0, Direction::Ingress), allow(2)),
        (key(ID_B, ID_A, 17, 0, Direction::Ingress), allow(2)),
    ];
    let mut i = 0u32;
    while v.len() < n {
        v.push((
            key(ID_B, 100_000 + i, 6, IPERF_PORT, Direction::Ingress),
            allow(3 + i),
        ));
        i += 1;
    }
    v
}

/// Cilium's first local CIDR identity (1 << 24).
const CIDR_IDENTITY_BASE: u32 = 1 << 24;

/// `n` ipcache prefixes: the two pods' /32s, then what a cluster's ipcache
/// holds besides: a covering entry for the pod range, other pods' /32s dense
/// around the two (so the trie's path to them is long), per-node pod
/// subnets, and world CIDRs of every length from /8 to /32 elsewhere
/// (`toCIDR` rules). Deterministic: every run gets the same trie.
pub fn ipcache_entries(n: usize) -> Vec<IpcacheEntry> {
    let local = |addr, identity| IpcacheEntry {
        addr,
        prefix_len: 32,
        value: IpcacheValue {
            identity,
            flags: IPCACHE_F_LOCAL_ENDPOINT,
        },
    };
    let mut out = vec![local(ADDR_A, ID_A), local(ADDR_B, ID_B)];
    let mut seen: HashSet<(u32, u8)> = out
        .iter()
        .map(|e| (u32::from(e.addr), e.prefix_len))
        .collect();
    let mut push = |out: &mut Vec<IpcacheEntry>, addr: u32, len: u8, identity: u32| {
        let masked = if len == 0 {
            0
        } else {
            addr & (u32::MAX << (32 - u32::from(len)))
        };
        if out.len() < n && seen.insert((masked, len)) {
            out.push(IpcacheEntry {
                addr: Ipv4Addr::from(masked),
                prefix_len: len,
                value: IpcacheValue { identity, flags: 0 },
            });
        }
    };
    let pod_range = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    // xorshift32: spread addresses, the same ones every run.
    let mut state: u32 = 0x9e37_79b9;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    // The pod range as a whole (no flow here is looked up there: A and B
    // have their /32s).
    push(&mut out, pod_range, 15, identity::WORLD);
    // Small sets (the 10-prefix row) get world CIDRs only, one per length.
    let pods_share = if n > 100 { n * 6 / 10 } else { 0 };
    let subnets_share = if n > 100 { n / 10 } else { 0 };
    let mut i = 0u32;
    while out.len() < n.min(2 + 1 + pods_share) {
        // Other pods: /32s in 198.18.0.0/15, the first few hundred right
        // next to A and B.
        let offset = if i < 512 { i + 3 } else { next() & 0x1_ffff };
        push(&mut out, pod_range | offset, 32, 10_000 + i);
        i += 1;
    }
    while out.len() < n.min(2 + 1 + pods_share + subnets_share) {
        // Per-node pod subnets (/24 to /28) in the same range.
        let len = 24 + (next() % 5) as u8;
        push(&mut out, pod_range | (next() & 0x1_ffff), len, 20_000 + i);
        i += 1;
    }
    let mut k = 0u32;
    while out.len() < n {
        // World CIDRs, every length from /8 to /32, outside 198.18.0.0/15.
        let len = 8 + (k % 25) as u8;
        let addr = next();
        if addr >> 17 != pod_range >> 17 {
            push(&mut out, addr, len, CIDR_IDENTITY_BASE + k);
        }
        k += 1;
    }
    out
}

/// `n` rules in B's own INPUT chain (never the host's): n-1 that the
/// benchmark's traffic walks past, then an ACCEPT.
pub fn iptables_rules(topo: &Topo, n: usize) -> anyhow::Result<()> {
    let mut rules = String::from("*filter\n:INPUT ACCEPT [0:0]\n");
    for i in 0..n.saturating_sub(1) {
        rules.push_str(&format!(
            "-A INPUT -s 198.19.{}.{}/32 -p tcp --dport {IPERF_PORT} -j DROP\n",
            i / 250,
            i % 250 + 1
        ));
    }
    rules.push_str("-A INPUT -s 198.18.0.1/32 -j ACCEPT\nCOMMIT\n");
    sh_in_with_input(&topo.pod_b, &["iptables-restore"], &rules)
}

/// Empties B's INPUT chain.
pub fn iptables_flush(topo: &Topo) -> anyhow::Result<()> {
    sh_in_with_input(
        &topo.pod_b,
        &["iptables-restore"],
        "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n",
    )
}

/// The O(1) alternative a careful iptables user would pick: one rule, one set.
pub fn nft_set(topo: &Topo, n: usize) -> anyhow::Result<()> {
    let mut elements = Vec::with_capacity(n);
    for i in 0..n {
        elements.push(format!("198.19.{}.{} . {IPERF_PORT}", i / 250, i % 250 + 1));
    }
    let script = format!(
        "table ip cnpbench {{\n set blocked {{ type ipv4_addr . inet_service; elements = {{ {} }} }}\n \
         chain input {{ type filter hook input priority 0; policy accept; ip saddr . tcp dport @blocked drop; }}\n}}\n",
        elements.join(", ")
    );
    sh_in_with_input(&topo.pod_b, &["nft", "-f", "-"], &script)
}

pub fn nft_delete(topo: &Topo) -> anyhow::Result<()> {
    sh_in_with_input(
        &topo.pod_b,
        &["nft", "-f", "-"],
        "delete table ip cnpbench\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipcache_sets_have_the_asked_size_distinct_prefixes_and_the_pods() {
        for n in [10, 10_000] {
            let e = ipcache_entries(n);
            assert_eq!(e.len(), n);
            let distinct: HashSet<_> = e.iter().map(|e| (e.addr, e.prefix_len)).collect();
            assert_eq!(distinct.len(), n);
            assert!(e.iter().any(|e| e.addr == ADDR_A && e.prefix_len == 32));
            assert!(e.iter().any(|e| e.addr == ADDR_B && e.prefix_len == 32));
        }
        let lens: HashSet<u8> = ipcache_entries(10_000)
            .iter()
            .map(|e| e.prefix_len)
            .collect();
        assert_eq!(lens.len(), 25, "every length from /8 to /32: {lens:?}");
    }

    #[test]
    fn selecting_a_compared_row_brings_its_reference_and_the_baseline() {
        let ids = |rows: &[&str], other| -> Vec<&'static str> {
            let rows: Vec<String> = rows.iter().map(|s| s.to_string()).collect();
            select(&rows, other).unwrap().iter().map(|r| r.id).collect()
        };
        assert_eq!(
            ids(&["enforce-10k-ipcache"], false),
            ["none", "enforce", "enforce-10k-ipcache"]
        );
        assert_eq!(
            ids(&["enforce"], true),
            ["none", "enforce-other", "enforce"]
        );
        assert_eq!(ids(&[], false).len(), 9);
        assert_eq!(
            ids(&["enforce-hostfw"], false),
            ["none", "enforce", "enforce-hostfw"]
        );
        assert!(select(&["nope".to_string()], false).is_err());
        assert!(select(&["audit-other".to_string()], true).is_err());
    }
}
