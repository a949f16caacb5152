//! Policies -> map entries, through the recommender's compiler (the same
//! index the evaluator uses, so the datapath and `policy test` agree).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use crate::error::Context;
use cnpilot_bpf::maps::{
    action, identity, Direction, IpcacheValue, PolicyKey, PolicyValue, SubjectKey, SubjectValue,
};
use cnpilot_bpf::IpcacheEntry;
use cnpilot_recommender::{CompiledPolicy, IdentityInput};

use crate::inventory::Inventory;

pub struct MapEntries {
    pub policy: Vec<(PolicyKey, PolicyValue)>,
    pub subjects: Vec<(SubjectKey, SubjectValue)>,
    /// Beyond the pods' own addresses (CIDR identities from policies).
    pub ipcache: Vec<IpcacheEntry>,
    /// What the L7 proxy asks per request (same compilation as the maps).
    pub compiled: Arc<CompiledPolicy>,
}

/// The DNS side of a compilation: the DNS proxy's port (0: none, so
/// `rules.dns` is allowed at L4 and no name is ever learned) and the
/// addresses learned from its answers.
#[derive(Debug, Clone, Default)]
pub struct DnsInput {
    pub port: u16,
    pub fqdns: Vec<cnpilot_recommender::compile::FqdnInput>,
}

/// No policies: nothing is selected, everything is allowed (and counted).
pub fn none() -> MapEntries {
    MapEntries {
        policy: Vec::new(),
        subjects: Vec::new(),
        ipcache: Vec::new(),
        compiled: Arc::new(CompiledPolicy::default()),
    }
}

/// Which server ports the proxy records HTTP on without any L7 rule
/// (Cilium's proxy visibility), in audit and enforce alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    Off,
    /// The ports each pod declares as HTTP, plus these.
    Auto(Vec<u16>),
    /// Exactly these ports, on every pod.
    Ports(Vec<u16>),
}

impl std::str::FromStr for Visibility {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(Visibility::Off);
        }
        let mut auto = false;
        let mut ports = Vec::new();
        for item in text.split(',').map(str::trim) {
            if item == "auto" {
                auto = true;
                continue;
            }
            match item.parse::<u16>() {
                Ok(p) if p > 0 => ports.push(p),
                _ => {
                    return Err(format!(
                        "`{item}`: expected auto, off, or a comma-separated list of TCP ports (e.g. auto,8443 or 8080,9090)"
                    ))
                }
            }
        }
        ports.sort_unstable();
        ports.dedup();
        Ok(if auto {
            Visibility::Auto(ports)
        } else {
            Visibility::Ports(ports)
        })
    }
}

impl Visibility {
    fn ports_of(&self, pod: &crate::inventory::Pod) -> Vec<u16> {
        let mut ports = match self {
            Visibility::Off => return Vec::new(),
            Visibility::Auto(extra) => {
                let mut p = pod.http_ports.clone();
                p.extend(extra);
                p
            }
            Visibility::Ports(p) => p.clone(),
        };
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// The agent's identities, with the learner's identity labels (so the
/// policies the agent enforces select exactly what the flow store records).
fn identity_inputs(inv: &Inventory) -> Vec<IdentityInput> {
    let mut inputs: Vec<IdentityInput> = Vec::new();
    for pod in inv.all_pods() {
        if let Some(existing) = inputs.iter_mut().find(|i| i.id == pod.identity) {
            existing.addrs.push(pod.ip);
            continue;
        }
        inputs.push(IdentityInput {
            id: pod.identity,
            namespace: pod.namespace.clone(),
            labels: pod
                .identity_labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            named_ports: Default::default(),
            addrs: vec![pod.ip],
        });
    }
    inputs
}

/// HTTP visibility in the maps: every connection to a visibility port of a
/// pod goes through the proxy, which records each request and forwards it
/// (policy decides as before). Where the pod's ingress has no policy, it
/// gets a subject entry without default deny and an any-peer entry; where
/// it has one, every entry that allows the port gets a port-exact twin
/// that also hands the connection to the proxy. Entries already carrying
/// L7 rules, and deny entries, stay as they are. Visibility entries are
/// never in the evaluator: it decides exactly as without them.
fn add_visibility(
    policy: &mut Vec<(PolicyKey, PolicyValue)>,
    subjects: &mut Vec<(SubjectKey, SubjectValue)>,
    inv: &Inventory,
    visibility: &Visibility,
    proxy_port: u16,
) -> usize {
    if proxy_port == 0 {
        return 0;
    }
    let mut added = 0;
    let mut done = std::collections::BTreeSet::new();
    for pod in &inv.pods {
        let ports = visibility.ports_of(pod);
        if ports.is_empty() || !done.insert(pod.identity) {
            continue;
        }
        // Whether a policy selects it: asked once, before the first port
        // adds the subject entry visibility needs.
        let selected = selects(subjects, pod.identity, Direction::Ingress);
        for port in ports {
            let side = VisibleSide {
                subject: pod.identity,
                direction: Direction::Ingress,
                proto: 6,
                port,
                proxy_port,
            };
            added += side.add(policy, subjects, selected);
        }
    }
    policy.sort_by_key(|(k, _)| *k);
    subjects.sort_by_key(|(k, _)| *k);
    added
}

/// DNS visibility: every pod's queries to port 53 (UDP and TCP) go through the DNS
/// proxy (the same twins as HTTP visibility, on the pod's egress), so each
/// query and answer is recorded and `toFQDNs` can learn names whether or
/// not a policy has `rules.dns`.
fn add_dns_visibility(
    policy: &mut Vec<(PolicyKey, PolicyValue)>,
    subjects: &mut Vec<(SubjectKey, SubjectValue)>,
    inv: &Inventory,
    dns_port: u16,
) -> usize {
    if dns_port == 0 {
        return 0;
    }
    let mut added = 0;
    let mut done = std::collections::BTreeSet::new();
    for pod in &inv.pods {
        if !done.insert(pod.identity) {
            continue;
        }
        let selected = selects(subjects, pod.identity, Direction::Egress);
        for proto in [17, 6] {
            let side = VisibleSide {
                subject: pod.identity,
                direction: Direction::Egress,
                proto,
                port: 53,
                proxy_port: dns_port,
            };
            added += side.add(policy, subjects, selected);
        }
    }
    policy.sort_by_key(|(k, _)| *k);
    subjects.sort_by_key(|(k, _)| *k);
    added
}

fn selects(subjects: &[(SubjectKey, SubjectValue)], identity: u32, direction: Direction) -> bool {
    let key = SubjectKey {
        identity,
        direction: direction as u32,
    };
    subjects.iter().any(|(k, _)| *k == key)
}

/// One subject's direction, protocol and port that a proxy should see.
struct VisibleSide {
    subject: u32,
    direction: Direction,
    proto: u8,
    port: u16,
    proxy_port: u16,
}

impl VisibleSide {
    /// Adds the visibility entries (see [`add_visibility`]); returns how
    /// many. `selected`: whether a policy selects the subject this way.
    fn add(
        &self,
        policy: &mut Vec<(PolicyKey, PolicyValue)>,
        subjects: &mut Vec<(SubjectKey, SubjectValue)>,
        selected: bool,
    ) -> usize {
        let dir = self.direction as u8;
        let subject = SubjectKey {
            identity: self.subject,
            direction: u32::from(dir),
        };
        if !subjects.iter().any(|(k, _)| *k == subject) {
            subjects.push((subject, SubjectValue { flags: 0 }));
        }
        let mut twins: Vec<(PolicyKey, PolicyValue)> = Vec::new();
        if !selected {
            twins.push((
                PolicyKey {
                    subject: self.subject,
                    peer: identity::ANY,
                    dport: self.port,
                    proto: self.proto,
                    direction: dir,
                },
                PolicyValue {
                    action: action::VISIBILITY,
                    pad: 0,
                    proxy_port: self.proxy_port,
                    rule_id: 0,
                },
            ));
        }
        for (k, v) in policy.iter() {
            let covers = k.subject == self.subject
                && k.direction == dir
                && (k.dport == self.port || k.dport == 0)
                && (k.proto == self.proto || k.proto == 0)
                && v.action == action::ALLOW
                // The host's own traffic to its pods never passes a
                // client veth: nothing to hand to the proxy.
                && k.peer != identity::HOST;
            if covers {
                twins.push((
                    PolicyKey {
                        dport: self.port,
                        proto: self.proto,
                        ..*k
                    },
                    PolicyValue {
                        action: action::VISIBILITY,
                        proxy_port: self.proxy_port,
                        ..*v
                    },
                ));
            }
        }
        let added = twins.len();
        for (key, value) in twins {
            match policy.iter_mut().find(|(k, _)| *k == key) {
                Some((_, existing)) if existing.action == action::ALLOW => *existing = value,
                Some(_) => {}
                None => policy.push((key, value)),
            }
        }
        added
    }
}

fn load_dir(dir: &Path) -> crate::Result<cnpilot_recommender::PolicySet> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading policy directory {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    cnpilot_recommender::load_paths(&files)
        .with_context(|| format!("loading policies from {}", dir.display()))
}

/// A namespace whose policies come from a staged enforce's proposal
/// instead of the base directory.
#[derive(Debug, Clone)]
pub struct Staged {
    pub namespace: String,
    pub dir: std::path::PathBuf,
}

/// The base directory's policies, with each staged namespace's
/// CiliumNetworkPolicies replaced by its proposal's. A proposal may only
/// speak for its own namespace: anything else in it is ignored, loudly.
fn effective_set(
    base: Option<&Path>,
    staged: &[Staged],
) -> crate::Result<cnpilot_recommender::PolicySet> {
    let mut set = match base {
        Some(dir) => load_dir(dir)?,
        None => Default::default(),
    };
    for stage in staged {
        set.policies
            .retain(|p| p.policy.scope_namespace() != Some(stage.namespace.as_str()));
        let mut proposal = load_dir(&stage.dir)?;
        proposal.policies.retain(|p| {
            let ours = p.policy.scope_namespace() == Some(stage.namespace.as_str());
            if !ours {
                tracing::warn!(
                    "{}:{}: {} is not a CiliumNetworkPolicy of namespace {}: a staged enforce of {} ignores it",
                    p.file,
                    p.line,
                    p.policy.metadata.name,
                    stage.namespace,
                    stage.namespace
                );
            }
            ours
        });
        set.extend(proposal);
    }
    Ok(set)
}

/// `proxy_port` goes into REDIRECT entries (0: no proxy, L7 ports pass at
/// L4). Without any policy nothing is selected, but visibility still
/// applies.
pub fn compile(
    base: Option<&Path>,
    staged: &[Staged],
    inv: &Inventory,
    proxy_port: u16,
    visibility: &Visibility,
    dns: &DnsInput,
) -> crate::Result<MapEntries> {
    if base.is_none() && staged.is_empty() && *visibility == Visibility::Off && dns.port == 0 {
        return Ok(none());
    }
    let set = effective_set(base, staged)?;
    let inputs = identity_inputs(inv);
    // The node's own identity (`host`) is a subject only with the host
    // firewall on: without devices to attach to, its entries would be
    // compiled and never judged.
    let node = (!inv.host_devices.is_empty()).then(|| cnpilot_recommender::compile::NodeInput {
        name: inv.node_name.clone(),
        labels: inv.node_labels.clone(),
    });
    let mut compiled = CompiledPolicy::compile_with_fqdns(&set, &inputs, node.as_ref(), &dns.fqdns);
    compiled.set_proxy_port(proxy_port);
    compiled.set_dns_proxy_port(dns.port);
    for w in compiled.warnings() {
        tracing::warn!("{w}");
    }
    let ipcache = compiled
        .ipcache_entries()
        .into_iter()
        .map(|(k, v)| IpcacheEntry {
            addr: Ipv4Addr::from(u32::from_be(k.addr)),
            prefix_len: u8::try_from(k.prefixlen).unwrap_or(32),
            value: IpcacheValue {
                identity: v.identity,
                flags: v.flags,
            },
        })
        .collect();
    let mut policy = compiled.policy_entries();
    let mut subjects = compiled.subject_entries();
    let visible = add_visibility(&mut policy, &mut subjects, inv, visibility, proxy_port);
    if visible > 0 {
        tracing::info!("HTTP visibility: {visible} proxy entries");
    }
    let visible = add_dns_visibility(&mut policy, &mut subjects, inv, dns.port);
    if visible > 0 {
        tracing::debug!("DNS visibility: {visible} proxy entries");
    }
    Ok(MapEntries {
        policy,
        subjects,
        ipcache,
        compiled: Arc::new(compiled),
    })
}
