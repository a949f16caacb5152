//! Running one case: identities for its endpoints, one compilation per node
//! perspective, each flow's verdict compared with the expected one.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use cnpilot_bpf::maps::{identity, Direction};
use serde::Serialize;

use super::{Case, FlowProto, FlowSpec};
use crate::compile::{
    combine, CompiledPolicy, FqdnInput, IdentityInput, NodeInput, Outcome, Side, Verdict,
    FQDN_IDENTITY_BASE,
};
use crate::model::{load_str_at, Diagnostic, LoadError};

/// The first identity number the case runner allocates to workloads.
pub const FIRST_WORKLOAD_IDENTITY: u32 = 256;

/// One flow's outcome, with the rules that decided each side.
#[derive(Debug, Clone, Serialize)]
pub struct FlowResult {
    pub case: String,
    pub index: usize,
    pub flow: String,
    pub expected: Verdict,
    pub got: Verdict,
    pub passed: bool,
    /// One line per enforcing side: outcome and deciding rule(s).
    pub explanation: Vec<String>,
}

/// Where a flow end lives: a pod (on the first node), a node's host, or an
/// identity with no local subject (entities, outside addresses).
#[derive(Debug, Clone, Copy)]
enum End {
    Pod(u32),
    Host(usize),
    Other(u32),
}

struct Perspectives {
    /// One compilation per node (index = node); pods live on node 0.
    compiled: Vec<CompiledPolicy>,
}

impl Perspectives {
    /// `end`'s identity as seen from node `node`.
    fn identity(&self, end: End, node: usize) -> u32 {
        match end {
            End::Pod(id) | End::Other(id) => id,
            End::Host(n) if n == node => identity::HOST,
            End::Host(_) => identity::REMOTE_NODE,
        }
    }

    fn side(&self, dir: Direction, subject: End, peer: End, flow: &FlowSpec) -> Side {
        let node = match subject {
            End::Pod(_) => 0,
            End::Host(n) => n,
            End::Other(_) => {
                return Side {
                    outcome: Outcome::NotEnforced,
                    rule: None,
                }
            }
        };
        let c = &self.compiled[node];
        // ICMP is matched on its type (Cilium reads an `icmps` field as an
        // L4 port); a flow that names none is a ping, as the agreement test
        // sends it.
        let port = if flow.proto == FlowProto::Icmp {
            u16::from(flow.icmp_type.unwrap_or(8))
        } else {
            flow.port.unwrap_or(0)
        };
        let (subject, peer) = (self.identity(subject, node), self.identity(peer, node));
        match &flow.dns {
            Some(qname) => c.check_dns(dir, subject, peer, flow.proto.number(), port, qname),
            None => c.check(
                dir,
                subject,
                peer,
                flow.proto.number(),
                port,
                flow.http.as_ref(),
            ),
        }
    }
}

/// The case's `world` addresses as the agent would hand them to
/// [`CompiledPolicy::compile_with_fqdns`]: one identity per address, from
/// [`FQDN_IDENTITY_BASE`] in the order listed. Anything that compiles a case
/// for comparison with [`run_case`] must use these.
pub fn fqdn_inputs(case: &Case) -> Vec<FqdnInput> {
    case.world
        .iter()
        .zip(FQDN_IDENTITY_BASE..)
        .map(|(w, id)| FqdnInput {
            addr: w.ip,
            id,
            names: w.fqdns.clone(),
        })
        .collect()
}

/// Run every flow of `case`; `file` labels policy diagnostics.
pub fn run_case(case: &Case, file: &str) -> Result<Vec<FlowResult>, LoadError> {
    let set = load_str_at(&case.policies, file, case.policies_line.max(1))?;
    let mut ids: BTreeMap<(String, BTreeMap<String, String>), IdentityInput> = BTreeMap::new();
    let mut pod_ids = BTreeMap::new();
    for ep in &case.endpoints {
        let next = FIRST_WORKLOAD_IDENTITY + ids.len() as u32;
        let entry = ids
            .entry((ep.namespace.clone(), ep.labels.clone()))
            .or_insert_with(|| IdentityInput {
                id: next,
                namespace: ep.namespace.clone(),
                labels: ep.labels.clone(),
                ..Default::default()
            });
        entry.named_ports.extend(ep.named_ports.clone());
        entry.addrs.extend(ep.ip);
        pod_ids.insert(ep.name.as_str(), entry.id);
    }
    let identities: Vec<IdentityInput> = ids.into_values().collect();
    let nodes: Vec<NodeInput> = case
        .nodes
        .iter()
        .map(|n| NodeInput {
            name: n.name.clone(),
            labels: n.labels.clone(),
        })
        .collect();
    let fqdns = fqdn_inputs(case);
    let compile = |node| CompiledPolicy::compile_with_fqdns(&set, &identities, node, &fqdns);
    let compiled = if nodes.is_empty() {
        vec![compile(None)]
    } else {
        nodes.iter().map(|n| compile(Some(n))).collect()
    };
    let views = Perspectives { compiled };
    let bad = |i: usize, message: String| {
        LoadError::Invalid(vec![Diagnostic {
            file: file.to_string(),
            line: 1,
            message: format!("case `{}` flow {i}: {message}", case.id),
        }])
    };
    let mut results = Vec::new();
    for (i, flow) in case.flows.iter().enumerate() {
        let end = |name: &Option<String>,
                   entity: &Option<String>,
                   cidr: &Option<Ipv4Addr>|
         -> Result<End, String> {
            match (name, entity, cidr) {
                (Some(n), None, None) => pod_ids
                    .get(n.as_str())
                    .map(|id| End::Pod(*id))
                    .or_else(|| case.nodes.iter().position(|x| &x.name == n).map(End::Host))
                    .ok_or_else(|| format!("`{n}` is neither an endpoint nor a node of this case")),
                (None, Some(e), None) => entity_end(e),
                (None, None, Some(a)) => Ok(End::Other(views.compiled[0].identity_of_addr(*a))),
                _ => Err(
                    "give exactly one of from/from_entity/from_cidr and of to/to_entity/to_cidr"
                        .into(),
                ),
            }
        };
        let src = end(&flow.from, &flow.from_entity, &flow.from_cidr).map_err(|m| bad(i, m))?;
        let dst = end(&flow.to, &flow.to_entity, &flow.to_cidr).map_err(|m| bad(i, m))?;
        if flow.proto.has_ports() && flow.port.is_none() {
            return Err(bad(i, "`port` is required for TCP, UDP and SCTP".into()));
        }
        if flow.dns.is_some() && flow.http.is_some() {
            return Err(bad(
                i,
                "a flow carries one request: `dns` or `http`, not both".into(),
            ));
        }
        if matches!(flow.proto, FlowProto::Vrrp | FlowProto::Igmp) && flow.port.is_some() {
            return Err(bad(
                i,
                "VRRP and IGMP have no ports: leave `port` out".into(),
            ));
        }
        // A reply travels back on a connection the other side opened: it
        // passes exactly when that connection was allowed at L3/L4.
        let (client, server) = if flow.reply { (dst, src) } else { (src, dst) };
        let egress = views.side(Direction::Egress, client, server, flow);
        let ingress = views.side(Direction::Ingress, server, client, flow);
        let mut got = combine(egress.outcome, ingress.outcome);
        if flow.reply && got == Verdict::DenyL7 {
            got = Verdict::Allow;
        }
        let mut explanation = Vec::new();
        for (name, side, subject) in [("egress", egress, client), ("ingress", ingress, server)] {
            if side.outcome != Outcome::NotEnforced {
                let node = if let End::Host(n) = subject { n } else { 0 };
                explanation.push(explain(
                    &views.compiled[node],
                    name,
                    side,
                    subject,
                    &views,
                    flow.dns.is_some(),
                ));
            }
        }
        results.push(FlowResult {
            case: case.id.clone(),
            index: i,
            flow: describe(flow),
            expected: flow.expect,
            got,
            passed: got == flow.expect,
            explanation,
        });
    }
    Ok(results)
}

fn entity_end(name: &str) -> Result<End, String> {
    Ok(match name {
        "host" => End::Host(0),
        "remote-node" => End::Other(identity::REMOTE_NODE),
        "world" => End::Other(identity::WORLD),
        "kube-apiserver" => End::Other(identity::KUBE_APISERVER),
        "health" => End::Other(identity::HEALTH),
        "init" => End::Other(identity::INIT),
        "ingress" => End::Other(identity::INGRESS),
        "unmanaged" => End::Other(identity::UNMANAGED),
        other => return Err(format!("unknown entity `{other}`: expected host, remote-node, world, kube-apiserver, health, init, ingress or unmanaged")),
    })
}

fn explain(
    c: &CompiledPolicy,
    name: &str,
    side: Side,
    subject: End,
    views: &Perspectives,
    dns: bool,
) -> String {
    let what = match side.outcome {
        Outcome::L7Denied if dns => {
            "denied by the DNS proxy (REFUSED): no rules.dns name matches the query; port rules from"
        }
        Outcome::NotEnforced => "not enforced",
        Outcome::NoPolicy => "allowed: no policy selects it in this direction",
        Outcome::Allowed => "allowed by",
        Outcome::L7Allowed => "allowed (L7) by",
        Outcome::L7Denied => "denied by the L7 proxy (403): no HTTP rule matches; port rules from",
        Outcome::DenyRule => "denied by",
        Outcome::DefaultDeny => "default deny: nothing allows it; selected by",
    };
    let rules: Vec<String> = if side.outcome == Outcome::DefaultDeny {
        let dir = if name == "egress" {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let subject = views.identity(subject, if let End::Host(n) = subject { n } else { 0 });
        c.selected_by(subject, dir)
            .iter()
            .filter_map(|r| c.rule(*r))
            .map(ToString::to_string)
            .collect()
    } else {
        side.rule
            .and_then(|r| c.rule(r))
            .map(ToString::to_string)
            .into_iter()
            .collect()
    };
    if rules.is_empty() {
        format!("{name}: {what}")
    } else {
        format!("{name}: {what} {}", rules.join("; "))
    }
}

fn describe(f: &FlowSpec) -> String {
    let end = |n: &Option<String>, e: &Option<String>, c: &Option<Ipv4Addr>| {
        n.clone()
            .or_else(|| e.as_ref().map(|e| format!("entity:{e}")))
            .or_else(|| c.map(|c| c.to_string()))
            .unwrap_or_default()
    };
    let mut s = format!(
        "{} -> {} {:?}",
        end(&f.from, &f.from_entity, &f.from_cidr),
        end(&f.to, &f.to_entity, &f.to_cidr),
        f.proto
    );
    s = s
        .replace("Tcp", "TCP")
        .replace("Udp", "UDP")
        .replace("Sctp", "SCTP")
        .replace("Icmp", "ICMP")
        .replace("Vrrp", "VRRP")
        .replace("Igmp", "IGMP");
    if let Some(p) = f.port {
        s.push_str(&format!("/{p}"));
    }
    if let Some(h) = &f.http {
        s.push_str(&format!(" {} {}", h.method, h.path));
    }
    if let Some(q) = &f.dns {
        s.push_str(&format!(" DNS {q}"));
    }
    if f.reply {
        s.push_str(" (reply)");
    }
    s
}
