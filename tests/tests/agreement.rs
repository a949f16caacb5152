//! Agreement (root tier): for every flow of every case file, the datapath's
//! L3/L4 verdict on a real packet equals the evaluator's.
//!
//! Per case: one netns per endpoint behind a "node" netns (one /32 route per
//! veth, as in `bpf/tests`), plus an "outside" netns holding a stand-in
//! address for every entity or CIDR the case's flows name. The case's
//! policies are compiled by the recommender and written to the maps (every
//! namespace in enforce), then each flow sends a real packet. `allow` and
//! `deny-l7` must be delivered (L7 is the proxy's job: with no proxy port
//! the datapath lets a redirected connection through), `deny` must not.
//!
//! Outside ends are stand-ins: a public CIDR address becomes a 198.19.1.x
//! address whose ipcache /32 carries the identity the evaluator gives the
//! original address (an address the case takes from 198.19/16 is used as is,
//! under the compiled prefixes). Entities get their reserved identity the
//! same way; the local host is the node netns (198.19.255.254, identity 1).
//!
//! A case with several nodes is also run from each other node's view that
//! its flows name: that node is the node netns (its host policy compiled
//! for its labels), the case's pods (all on the first node, as the
//! evaluator places them) are remote pods in the outside netns, and every
//! other node's host is a `remote-node` stand-in. A flow is delivered when
//! every view that judges it delivers it: node-2 → node-1 is node-2's host
//! egress in one view and node-1's host ingress in the other.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cnpilot_bpf::maps::{identity, reason, Direction, EndpointValue, IpcacheValue};
use cnpilot_bpf::maps::{ENDPOINT_F_HOST, IPCACHE_F_LOCAL_ENDPOINT};
use cnpilot_bpf::testing::privileged_tests_enabled;
use cnpilot_bpf::{netns, Datapath, HostPath, IpcacheEntry, Mode};
use cnpilot_recommender::cases::{load_case_paths, run_case, Case, FlowProto, FlowSpec};
use cnpilot_recommender::model::load_str_at;
use cnpilot_recommender::{CompiledPolicy, IdentityInput, NodeInput, Verdict};

#[path = "agreement_support/lab.rs"]
mod lab;
#[path = "agreement_support/packets.rs"]
mod packets;

use lab::{in_prefix, CaseLab, End, GATEWAY};
use packets::{raw_delivered, tcp_delivered, udp_delivered, Servers};

const LAB_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
const WORKERS: usize = 4;
/// The `ns_mode` key of the case lab's host (no namespace hashes to it in
/// these cases; the agent uses its node's name).
const HOST_MODE_KEY: u32 = 0xFFFF_FF00;

/// Flows where the datapath is known to be wrong, with the fix it needs.
/// They are still sent and printed; one that starts agreeing is reported so
/// its line can go.
const KNOWN_DISAGREEMENTS: &[(&str, &str)] = &[];

/// What a flow showed, or why it was not sent.
enum Outcome {
    Agreed,
    Disagreed(String),
    Skipped(&'static str),
}

/// A case compiled for the lab: identities, addresses, ends of each flow.
struct Plan {
    compiled: CompiledPolicy,
    pod_ids: Vec<u32>,
    pod_ns: Vec<u32>,
    pod_addrs: Vec<Ipv4Addr>,
    ns_ids: Vec<u32>,
    /// Stand-in address → identity to pin in the ipcache (None: as compiled).
    outside: BTreeMap<Ipv4Addr, Option<u32>>,
    /// Which of the case's nodes this lab is (0 when it has none): its host
    /// is the node netns; the case's pods live on node 0, so on any other
    /// node they are remote pods in the outside netns, and every other
    /// node's host is a `remote-node` stand-in.
    local: usize,
}

impl Plan {
    fn pods_are_local(&self) -> bool {
        self.local == 0
    }
}

fn plan(case: &Case, file: &str, local: usize) -> Plan {
    let set = load_str_at(&case.policies, file, case.policies_line.max(1)).unwrap();
    let mut ids: Vec<IdentityInput> = Vec::new();
    let mut namespaces: Vec<String> = Vec::new();
    let mut pod_ids = Vec::new();
    let mut pod_ns = Vec::new();
    let mut pod_addrs = Vec::new();
    let given: Vec<Ipv4Addr> = case.endpoints.iter().filter_map(|e| e.ip).collect();
    let mut next_addr = (1u8..).map(|h| Ipv4Addr::new(198, 18, 0, h));
    for ep in &case.endpoints {
        let addr = match ep.ip {
            Some(a) if in_prefix(a, LAB_RANGE) && a != GATEWAY => a,
            _ => next_addr.find(|a| !given.contains(a)).unwrap(),
        };
        let pos = ids
            .iter()
            .position(|i| i.namespace == ep.namespace && i.labels == ep.labels)
            .unwrap_or_else(|| {
                ids.push(IdentityInput {
                    id: 256 + ids.len() as u32,
                    namespace: ep.namespace.clone(),
                    labels: ep.labels.clone(),
                    ..Default::default()
                });
                ids.len() - 1
            });
        ids[pos].named_ports.extend(ep.named_ports.clone());
        ids[pos].addrs.push(addr);
        pod_ids.push(ids[pos].id);
        if !namespaces.contains(&ep.namespace) {
            namespaces.push(ep.namespace.clone());
        }
        pod_ns.push(namespaces.iter().position(|n| n == &ep.namespace).unwrap() as u32 + 1);
        pod_addrs.push(addr);
    }
    let node = case.nodes.get(local).map(|n| NodeInput {
        name: n.name.clone(),
        labels: n.labels.clone(),
    });
    // World addresses the case says DNS answered for names: FQDN /32s in
    // the ipcache, as the agent's DNS proxy would have put them.
    let compiled = CompiledPolicy::compile_with_fqdns(
        &set,
        &ids,
        node.as_ref(),
        &cnpilot_recommender::cases::fqdn_inputs(case),
    );
    let mut plan = Plan {
        compiled,
        pod_ids,
        pod_ns,
        pod_addrs,
        ns_ids: (1..=namespaces.len() as u32).collect(),
        outside: BTreeMap::new(),
        local,
    };
    let mut stand_ins = (1u8..).map(|h| Ipv4Addr::new(198, 19, 1, h));
    for flow in &case.flows {
        for (name, entity, cidr) in [
            (&flow.from, &flow.from_entity, flow.from_cidr),
            (&flow.to, &flow.to_entity, flow.to_cidr),
        ] {
            // Another node's host is a remote-node stand-in.
            let entity = match remote_host(case, &plan, name, entity) {
                true => Some("remote-node".to_string()),
                false => entity.clone(),
            };
            if let Some(key) = outside_identity(&plan, entity.as_deref(), cidr) {
                let taken: Vec<Ipv4Addr> = plan.outside.keys().copied().collect();
                match (cidr, key) {
                    (Some(a), None) if !taken.contains(&a) => {
                        plan.outside.insert(a, None);
                    }
                    (_, Some(id)) if !plan.outside.values().any(|v| *v == Some(id)) => {
                        let a = stand_ins.find(|a| !taken.contains(a)).unwrap();
                        plan.outside.insert(a, Some(id));
                    }
                    _ => {}
                }
            }
        }
    }
    plan
}

/// Whether a flow end is the host of a node other than the plan's own.
fn remote_host(case: &Case, plan: &Plan, name: &Option<String>, entity: &Option<String>) -> bool {
    if let Some(n) = name {
        return case
            .nodes
            .iter()
            .position(|x| &x.name == n)
            .is_some_and(|j| j != plan.local);
    }
    // `host` is the first node's (the case runner's reading).
    entity.as_deref() == Some("host") && plan.local != 0
}

/// Whether a flow names node `k` (by name, or `host` for the first).
fn names_node(case: &Case, flow: &FlowSpec, k: usize) -> bool {
    [(&flow.from, &flow.from_entity), (&flow.to, &flow.to_entity)]
        .iter()
        .any(|(name, entity)| match name {
            Some(n) => case.nodes.get(k).is_some_and(|x| &x.name == n),
            None => k == 0 && entity.as_deref() == Some("host"),
        })
}

/// For an outside end: `Some(None)` = use the address as is (it is a lab
/// address the compiled prefixes resolve), `Some(Some(id))` = a stand-in
/// pinned to `id`. `None`: not an outside end.
fn outside_identity(
    plan: &Plan,
    entity: Option<&str>,
    cidr: Option<Ipv4Addr>,
) -> Option<Option<u32>> {
    if let Some(a) = cidr {
        if plan.pod_addrs.contains(&a) {
            return None;
        }
        if in_prefix(a, (Ipv4Addr::new(198, 19, 0, 0), 16))
            && a != GATEWAY
            && !in_prefix(a, (Ipv4Addr::new(198, 19, 1, 0), 24))
        {
            return Some(None);
        }
        return Some(Some(plan.compiled.identity_of_addr(a)));
    }
    let id = match entity? {
        "world" => identity::WORLD,
        "remote-node" => identity::REMOTE_NODE,
        "kube-apiserver" => identity::KUBE_APISERVER,
        "health" => identity::HEALTH,
        "init" => identity::INIT,
        "ingress" => identity::INGRESS,
        "unmanaged" => identity::UNMANAGED,
        _ => return None,
    };
    Some(Some(id))
}

fn resolve(
    case: &Case,
    plan: &Plan,
    name: &Option<String>,
    entity: &Option<String>,
    cidr: Option<Ipv4Addr>,
) -> Result<End, &'static str> {
    let pod = |i: usize| {
        if plan.pods_are_local() {
            End::Pod(i)
        } else {
            End::Outside(plan.pod_addrs[i])
        }
    };
    if remote_host(case, plan, name, entity) {
        return stand_in(plan, identity::REMOTE_NODE).map(End::Outside);
    }
    if let Some(n) = name {
        if let Some(i) = case.endpoints.iter().position(|e| &e.name == n) {
            return Ok(pod(i));
        }
        return match case.nodes.iter().position(|x| &x.name == n) {
            Some(_) => Ok(End::Host),
            None => Err("unknown flow end"),
        };
    }
    if entity.as_deref() == Some("host") {
        return Ok(End::Host);
    }
    if let Some(a) = cidr {
        if let Some(i) = plan.pod_addrs.iter().position(|p| *p == a) {
            return Ok(pod(i));
        }
    }
    let key = outside_identity(plan, entity.as_deref(), cidr).ok_or("unknown flow end")?;
    let addr = match (cidr, key) {
        (Some(a), None) => Some(a),
        (_, Some(id)) => stand_in(plan, id).ok(),
        _ => None,
    };
    addr.map(End::Outside).ok_or("no stand-in address")
}

fn stand_in(plan: &Plan, id: u32) -> Result<Ipv4Addr, &'static str> {
    plan.outside
        .iter()
        .find(|(_, v)| **v == Some(id))
        .map(|(a, _)| *a)
        .ok_or("no stand-in address")
}

fn addr_of(plan: &Plan, end: End) -> Ipv4Addr {
    match end {
        End::Pod(i) => plan.pod_addrs[i],
        End::Host => GATEWAY,
        End::Outside(a) => a,
    }
}

/// What one node's lab saw of a flow.
enum Seen {
    Judged {
        delivered: bool,
        /// The datapath's counters for it, when it disagreed.
        counted: String,
    },
    /// Nothing this node judges is on the flow's path.
    NotOnPath,
    Skipped(&'static str),
}

/// Runs a case from the view of each node its flows name (a flow between
/// two nodes' hosts is judged on both: egress on one, ingress on the other)
/// and compares what they delivered together with the evaluator's verdict.
fn run_in_lab(file: &str, case: &Case) -> Vec<(String, Outcome)> {
    let evaluated = run_case(case, file).unwrap();
    let mut seen: Vec<Vec<(usize, Seen)>> = case.flows.iter().map(|_| Vec::new()).collect();
    let views = (0..case.nodes.len().max(1))
        .filter(|&k| k == 0 || case.flows.iter().any(|f| names_node(case, f, k)));
    for k in views {
        for (i, s) in run_view(file, case, k).into_iter().enumerate() {
            seen[i].push((k, s));
        }
    }
    let node_name = |k: usize| case.nodes.get(k).map_or("the node", |n| n.name.as_str());
    let mut out = Vec::new();
    for (i, views) in seen.into_iter().enumerate() {
        let label = format!("{}#{i} {}", case.id, evaluated[i].flow);
        let evaluator = evaluated[i].got;
        let expected = evaluator != Verdict::Deny;
        let mut judged = Vec::new();
        let mut skipped = None;
        for (k, s) in views {
            match s {
                Seen::Judged { delivered, counted } => judged.push((k, delivered, counted)),
                Seen::NotOnPath => {}
                Seen::Skipped(why) => skipped = skipped.or(Some(why)),
            }
        }
        let outcome = match skipped {
            Some(why) => Outcome::Skipped(why),
            None if judged.is_empty() => {
                Outcome::Skipped("neither a pod nor the host's link to the outside on the path")
            }
            None if judged.iter().all(|(_, d, _)| *d) == expected => Outcome::Agreed,
            None => Outcome::Disagreed(format!(
                "evaluator says {evaluator:?}; {}",
                judged
                    .iter()
                    .map(|(k, d, counted)| format!(
                        "on {} the datapath {} it{counted}",
                        node_name(*k),
                        if *d { "delivered" } else { "did not deliver" }
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        };
        out.push((label, outcome));
    }
    out
}

/// Builds the case's lab as node `local` sees it, programs the datapath
/// and sends every flow that crosses that node.
fn run_view(file: &str, case: &Case, local: usize) -> Vec<Seen> {
    let evaluated = run_case(case, file).unwrap();
    let plan = plan(case, file, local);
    let mut outside: Vec<Ipv4Addr> = plan.outside.keys().copied().collect();
    let local_pods: &[Ipv4Addr] = if plan.pods_are_local() {
        &plan.pod_addrs
    } else {
        outside.extend(&plan.pod_addrs);
        &[]
    };
    let lab = CaseLab::new(local_pods, &outside);
    let mut dp = Datapath::load_or_open(&lab.pin_dir).unwrap();
    let node = netns::named(&lab.node);
    for (i, addr) in local_pods.iter().enumerate() {
        let veth = lab.pod_veth(i);
        dp.attach(Some(&node), &veth).unwrap();
        let ifindex = netns::ifindex(&node, &veth).unwrap();
        let ep = EndpointValue {
            identity: plan.pod_ids[i],
            ns_id: plan.pod_ns[i],
            addr: u32::from(*addr).to_be(),
            flags: 0,
        };
        dp.tables_mut().upsert_endpoint(ifindex, ep).unwrap();
    }
    // The host firewall on the node's link to the outside: host <-> world
    // flows are judged there, as on a node's uplink.
    if !outside.is_empty() {
        let veth = lab.outside_veth();
        dp.attach_host(Some(&node), &veth).unwrap();
        let ep = EndpointValue {
            identity: identity::HOST,
            ns_id: HOST_MODE_KEY,
            addr: u32::from(GATEWAY).to_be(),
            flags: ENDPOINT_F_HOST,
        };
        let ifindex = netns::ifindex(&node, &veth).unwrap();
        dp.tables_mut().upsert_endpoint(ifindex, ep).unwrap();
    }
    let t = dp.tables_mut();
    t.set_mode(HOST_MODE_KEY, Mode::Enforce).unwrap();
    // The host firewall is on: host <-> local pod flows are judged at the
    // pod's veth by the host's policy too.
    t.set_host_path(Some(HostPath {
        identity: identity::HOST,
        ns_id: HOST_MODE_KEY,
        addr: GATEWAY,
    }))
    .unwrap();
    t.replace_policy(plan.compiled.policy_entries()).unwrap();
    t.replace_subjects(plan.compiled.subject_entries()).unwrap();
    let pinned = |addr, identity| IpcacheEntry {
        addr,
        prefix_len: 32,
        value: IpcacheValue { identity, flags: 0 },
    };
    let mut ipcache: Vec<IpcacheEntry> = plan
        .compiled
        .ipcache_entries()
        .into_iter()
        .map(|(k, mut value)| {
            if !plan.pods_are_local() {
                // The case's pods are on node 0: remote pods here.
                value.flags &= !IPCACHE_F_LOCAL_ENDPOINT;
            }
            IpcacheEntry {
                addr: Ipv4Addr::from(u32::from_be(k.addr)),
                prefix_len: k.prefixlen as u8,
                value,
            }
        })
        .collect();
    ipcache.push(pinned(GATEWAY, identity::HOST));
    for (addr, id) in &plan.outside {
        if let Some(id) = id {
            ipcache.push(pinned(*addr, *id));
        }
    }
    assert!(
        ipcache
            .iter()
            .filter(|e| e.value.flags & IPCACHE_F_LOCAL_ENDPOINT != 0)
            .count()
            == local_pods.len(),
        "{}: the compiled ipcache must hold every pod",
        case.id
    );
    t.set_ipcache(&ipcache).unwrap();
    for ns in &plan.ns_ids {
        t.set_mode(*ns, Mode::Enforce).unwrap();
    }

    let mut servers = Servers::default();
    case.flows
        .iter()
        .enumerate()
        .map(|(i, flow)| {
            if local != 0 && !names_node(case, flow, local) {
                return Seen::NotOnPath;
            }
            send_flow(
                &lab,
                &plan,
                case,
                flow,
                &mut dp,
                &mut servers,
                evaluated[i].got,
            )
        })
        .collect()
}

fn send_flow(
    lab: &CaseLab,
    plan: &Plan,
    case: &Case,
    flow: &FlowSpec,
    dp: &mut Datapath,
    servers: &mut Servers,
    evaluator: Verdict,
) -> Seen {
    if flow.reply
        && matches!(
            flow.proto,
            FlowProto::Sctp | FlowProto::Icmp | FlowProto::Vrrp | FlowProto::Igmp
        )
    {
        return Seen::Skipped("a reply of a raw protocol (only new packets are sent raw)");
    }
    let ends = resolve(case, plan, &flow.from, &flow.from_entity, flow.from_cidr)
        .and_then(|f| resolve(case, plan, &flow.to, &flow.to_entity, flow.to_cidr).map(|t| (f, t)));
    let (src, dst) = match ends {
        Ok(e) => e,
        Err(why) => return Seen::Skipped(why),
    };
    let (client, server) = if flow.reply { (dst, src) } else { (src, dst) };
    let pod_on_path = matches!(client, End::Pod(_)) || matches!(server, End::Pod(_));
    let host_and_outside = matches!(
        (client, server),
        (End::Host, End::Outside(_)) | (End::Outside(_), End::Host)
    );
    if !pod_on_path && !host_and_outside {
        return Seen::NotOnPath;
    }
    if client == server {
        return Seen::Skipped("a pod to itself never crosses its veth");
    }
    let port = flow.port.unwrap_or(0);
    let (from, to) = (addr_of(plan, client), addr_of(plan, server));
    let client_ns = lab.netns_of(client);
    let expected = evaluator != Verdict::Deny;
    let mut attempt = |wait| {
        dp.tables_mut().flush_conntrack().unwrap();
        let target = SocketAddr::from((to, port));
        match flow.proto {
            FlowProto::Tcp => {
                let l = servers.tcp(&lab.netns_of(server), to, port);
                tcp_delivered(&client_ns, from, target, l, flow.reply, wait)
            }
            FlowProto::Udp => {
                let s = servers.udp(&lab.netns_of(server), to, port);
                udp_delivered(&client_ns, from, target, s, flow.reply, wait)
            }
            FlowProto::Sctp | FlowProto::Icmp | FlowProto::Vrrp | FlowProto::Igmp => {
                let s = servers.raw(&lab.netns_of(server), to, flow.proto.number());
                raw_delivered(&client_ns, from, to, flow, s, wait)
            }
        }
    };
    let mut delivered = attempt(Duration::from_millis(300));
    if expected && !delivered {
        // A slow machine, not a verdict: try once more with time to spare.
        delivered = attempt(Duration::from_secs(2));
    }
    if delivered == expected {
        return Seen::Judged {
            delivered,
            counted: String::new(),
        };
    }
    // What the datapath decided, from its per-flow counters.
    let counted: Vec<String> = dp
        .tables()
        .read_counters()
        .unwrap()
        .into_iter()
        .filter(|(k, _)| {
            k.proto == flow.proto.number()
                && (k.saddr, k.daddr) == (u32::from(from).to_be(), u32::from(to).to_be())
        })
        .map(|(k, c)| {
            let side = if k.direction == Direction::Ingress as u8 {
                "ingress"
            } else {
                "egress"
            };
            let verdict = ["forwarded", "would-drop", "dropped", "redirected"]
                .get(usize::from(c.verdict))
                .unwrap_or(&"?");
            let whose = if c.reason & reason::F_HOST != 0 {
                "the host's "
            } else {
                ""
            };
            let why = match reason::code(c.reason) {
                reason::DEFAULT_DENY => format!("{whose}default deny"),
                // 0 is both "no rule decided" and the allow-localhost rule.
                _ if c.rule_id == 0 => "no rule, or allow-localhost".to_string(),
                _ => plan
                    .compiled
                    .rule(c.rule_id)
                    .map_or_else(String::new, ToString::to_string),
            };
            format!("{side} {verdict} ({why})")
        })
        .collect();
    Seen::Judged {
        delivered,
        counted: format!(
            " ({from} -> {to}:{port}); counted: [{}]",
            counted.join("; ")
        ),
    }
}

fn case_paths() -> [PathBuf; 2] {
    [
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../recommender/seed-cases/article.yaml"
        )),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../recommender/cases")),
    ]
}

#[test]
fn datapath_verdicts_agree_with_the_evaluator_on_every_case_flow() {
    if !privileged_tests_enabled("datapath_verdicts_agree_with_the_evaluator_on_every_case_flow") {
        return;
    }
    let started = Instant::now();
    let cases: Vec<(String, Case)> = load_case_paths(&case_paths())
        .unwrap()
        .into_iter()
        .flat_map(|f| {
            let file = f.file;
            f.cases.into_iter().map(move |c| (file.clone(), c))
        })
        .collect();
    let next = AtomicUsize::new(0);
    let results: Vec<(String, Outcome)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    while let Some((file, case)) = cases.get(next.fetch_add(1, Ordering::SeqCst)) {
                        out.extend(run_in_lab(file, case));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });

    let mut agreed = 0;
    let mut disagreed = Vec::new();
    let mut known = Vec::new();
    let mut skipped: BTreeMap<&str, usize> = BTreeMap::new();
    let known_id = |label: &str| {
        KNOWN_DISAGREEMENTS
            .iter()
            .find(|(id, _)| label.split(' ').next() == Some(*id))
            .map(|(_, why)| *why)
    };
    for (label, outcome) in &results {
        match (outcome, known_id(label)) {
            (Outcome::Agreed, None) => agreed += 1,
            (Outcome::Agreed, Some(_)) => {
                agreed += 1;
                eprintln!("  NOW AGREES (remove it from KNOWN_DISAGREEMENTS): {label}");
            }
            (Outcome::Disagreed(why), None) => disagreed.push(format!("{label}: {why}")),
            (Outcome::Disagreed(why), Some(bug)) => {
                known.push(format!("{label}: {why}\n      known: {bug}"))
            }
            (Outcome::Skipped(why), _) => *skipped.entry(why).or_default() += 1,
        }
    }
    let skipped_total: usize = skipped.values().sum();
    eprintln!(
        "{agreed} flows agreed, {} disagreed, {} known datapath bugs, {skipped_total} skipped \
         ({} cases, {:.1?})",
        disagreed.len(),
        known.len(),
        cases.len(),
        started.elapsed()
    );
    for (why, n) in &skipped {
        eprintln!("  skipped {n}: {why}");
    }
    for k in &known {
        eprintln!("  KNOWN {k}");
    }
    for d in &disagreed {
        eprintln!("  DISAGREES {d}");
    }
    assert!(
        disagreed.is_empty(),
        "{} flows where the datapath and the evaluator disagree:\n{}",
        disagreed.len(),
        disagreed.join("\n")
    );
    assert!(
        agreed >= 150,
        "only {agreed} flows were sent: the case files or the lab lost most of them"
    );
    assert_eq!(
        results.len(),
        cases.iter().map(|(_, c)| c.flows.len()).sum::<usize>()
    );
}
