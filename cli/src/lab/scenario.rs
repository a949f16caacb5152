//! Scenario files: the cluster a lab builds (namespaces, workloads, their
//! servers and clients, and the "world" outside the cluster).
//!
//! Every structural mistake (an unknown field, a wrong type) is reported by
//! serde_yaml with its line; semantic mistakes (a client calling a workload
//! that does not exist) are located by searching the offending value in the
//! source, so both read `FILE:LINE: what was expected`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The scenario built into the binary: the article's cluster.
pub const SEED_YAML: &str = include_str!("../../scenarios/seed.yaml");
/// A second, remote node: `--scenario two-nodes`.
pub const TWO_NODES_YAML: &str = include_str!("../../scenarios/two-nodes.yaml");

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        file: String,
        line: Option<usize>,
        message: String,
    },
    #[error("reading scenario {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Scenario {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub namespaces: Vec<NamespaceSpec>,
    pub workloads: Vec<Workload>,
    /// Hosts outside the cluster (198.19.0.0/16), served by the `world` netns.
    #[serde(default)]
    pub world: Vec<WorldHost>,
    /// How many node netns: node 1 routes to the world, nodes 2.. stand in
    /// for remote nodes (their IPs are Cilium's `remote-node`).
    #[serde(default = "one_node")]
    pub nodes: u8,
}

fn one_node() -> u8 {
    1
}

/// The most nodes a lab builds (node IPs are 198.18.255.1..=8).
pub const MAX_NODES: u8 = 8;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespaceSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The controller kind decides the per-pod labels and pod names a real
/// cluster would give the pods (`pod-template-hash`, `controller-revision-hash`…).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub kind: WorkloadKind,
    /// Template labels; `app: <name>` when empty.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default = "one")]
    pub replicas: u32,
    /// Runs in the node's network namespace, with the node's address.
    #[serde(default)]
    pub host_network: bool,
    /// Which node (1-based) the pods run on.
    #[serde(default = "one_node")]
    pub node: u8,
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default)]
    pub clients: Vec<Client>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    /// HTTP/1.1 with the listed routes (404 for any other path).
    Http,
    /// TCP: echoes the stream back; UDP: echoes each datagram.
    Echo,
    /// The lab's DNS responder (A records for the scenario's names).
    Dns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Server {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    pub kind: ServerKind,
    #[serde(default)]
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Route {
    pub method: String,
    /// Exact path, or a prefix when it ends with `*`.
    pub path: String,
    #[serde(default = "ok_status")]
    pub status: u16,
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Client {
    /// `WORKLOAD.NAMESPACE:PORT` or `WORLD-ADDRESS:PORT`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Requests (connections, datagrams) per second.
    pub rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorldHost {
    pub address: Ipv4Addr,
    /// A DNS name the lab's responder answers for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

/// Where a client's target points, after checking it against the scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Workload {
        namespace: String,
        workload: String,
        port: u16,
    },
    World {
        address: Ipv4Addr,
        port: u16,
    },
    /// A world host by its `name`, resolved through the lab's DNS
    /// responder as a client outside the lab would.
    Named {
        name: String,
        port: u16,
    },
}

impl Target {
    pub fn parse(text: &str) -> Result<Target, String> {
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!(
                "target `{text}`: expected WORKLOAD.NAMESPACE:PORT, a world host's NAME:PORT or ADDRESS:PORT"
            )
        })?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("target `{text}`: port `{port}` is not a number 1-65535"))?;
        if port == 0 {
            return Err(format!("target `{text}`: port 0 is not a valid port"));
        }
        if let Ok(address) = host.parse::<Ipv4Addr>() {
            return Ok(Target::World { address, port });
        }
        let short = host.strip_suffix(".svc.cluster.local").unwrap_or(host);
        match short.split_once('.') {
            Some((workload, namespace)) if !workload.is_empty() && !namespace.contains('.') => {
                Ok(Target::Workload {
                    namespace: namespace.to_string(),
                    workload: workload.to_string(),
                    port,
                })
            }
            Some(_) if host.split('.').all(|l| !l.is_empty()) => Ok(Target::Named {
                name: host.to_ascii_lowercase(),
                port,
            }),
            _ => Err(format!(
                "target `{text}`: expected WORKLOAD.NAMESPACE:PORT, a world host's NAME:PORT or ADDRESS:PORT"
            )),
        }
    }
}

impl Scenario {
    /// `seed` (built in) or a path to a YAML file.
    pub fn load(name_or_path: &str) -> Result<Scenario, ScenarioError> {
        match name_or_path {
            "seed" => return Scenario::parse(SEED_YAML, "seed (built in)"),
            "two-nodes" => return Scenario::parse(TWO_NODES_YAML, "two-nodes (built in)"),
            _ => {}
        }
        let text = std::fs::read_to_string(name_or_path).map_err(|source| ScenarioError::Read {
            file: name_or_path.to_string(),
            source,
        })?;
        Scenario::parse(&text, name_or_path)
    }

    pub fn parse(text: &str, file: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = serde_yaml::from_str(text).map_err(|err| {
            let (line, column) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            ScenarioError::Syntax {
                file: file.to_string(),
                line,
                column,
                message: err.to_string(),
            }
        })?;
        scenario
            .validate()
            .map_err(|(needle, message)| ScenarioError::Invalid {
                file: file.to_string(),
                line: needle.and_then(|n| line_of(text, &n)),
                message,
            })?;
        Ok(scenario)
    }

    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .iter()
            .find(|w| w.namespace == namespace && w.name == name)
    }

    /// The world host a DNS name stands for (names are case-insensitive).
    pub fn world_host_named(&self, name: &str) -> Option<&WorldHost> {
        self.world.iter().find(|h| {
            h.name
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })
    }

    /// A client's target as this scenario reads it: a two-label name such
    /// as `api.example` is a workload when one is called so, and otherwise
    /// the world host of that name.
    pub fn target(&self, text: &str) -> Result<Target, String> {
        let target = Target::parse(text)?;
        if let Target::Workload {
            namespace,
            workload,
            port,
        } = &target
        {
            let name = format!("{workload}.{namespace}");
            if self.workload(namespace, workload).is_none()
                && self.world_host_named(&name).is_some()
            {
                return Ok(Target::Named {
                    name: name.to_ascii_lowercase(),
                    port: *port,
                });
            }
        }
        Ok(target)
    }

    /// The server a client's target reaches, if the scenario defines it.
    pub fn server_for(&self, target: &Target, protocol: Option<Protocol>) -> Option<&Server> {
        let (servers, port) = match target {
            Target::Workload {
                namespace,
                workload,
                port,
            } => (&self.workload(namespace, workload)?.servers, *port),
            Target::World { address, port } => (
                &self.world.iter().find(|h| h.address == *address)?.servers,
                *port,
            ),
            Target::Named { name, port } => (&self.world_host_named(name)?.servers, *port),
        };
        servers
            .iter()
            .find(|s| s.port == port && protocol.is_none_or(|p| p == s.protocol))
    }

    /// Errors carry a value to find in the source (for the line) and a message.
    fn validate(&self) -> Result<(), (Option<String>, String)> {
        let mut namespaces = BTreeSet::new();
        for ns in &self.namespaces {
            check_dns_label(&ns.name, "namespace name")?;
            if !namespaces.insert(ns.name.as_str()) {
                return Err((
                    Some(ns.name.clone()),
                    format!("namespace `{}` is listed twice", ns.name),
                ));
            }
        }
        if namespaces.len() > 250 {
            return Err((
                None,
                "at most 250 namespaces fit the lab's 198.18.0.0/16".into(),
            ));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return Err((
                Some(format!("nodes: {}", self.nodes)),
                format!("nodes must be 1-{MAX_NODES}"),
            ));
        }
        let mut workloads = BTreeSet::new();
        let mut host_ports = BTreeSet::new();
        for w in &self.workloads {
            check_dns_label(&w.name, "workload name")?;
            if !namespaces.contains(w.namespace.as_str()) {
                return Err((
                    Some(format!("namespace: {}", w.namespace)),
                    format!(
                        "workload `{}`: namespace `{}` is not in `namespaces` (expected one of: {})",
                        w.name,
                        w.namespace,
                        namespaces.iter().copied().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            if !workloads.insert((w.namespace.as_str(), w.name.as_str())) {
                return Err((
                    Some(format!("name: {}", w.name)),
                    format!("workload `{}/{}` is defined twice", w.namespace, w.name),
                ));
            }
            if w.replicas == 0 || w.replicas > 100 {
                return Err((
                    Some(format!("replicas: {}", w.replicas)),
                    format!(
                        "workload `{}/{}`: replicas must be 1-100",
                        w.namespace, w.name
                    ),
                ));
            }
            if w.host_network && w.replicas != 1 {
                return Err((
                    Some(format!("name: {}", w.name)),
                    format!(
                        "workload `{}/{}`: a hostNetwork workload has one pod on the lab's one node (replicas: 1)",
                        w.namespace, w.name
                    ),
                ));
            }
            if w.node == 0 || w.node > self.nodes {
                return Err((
                    Some(format!("node: {}", w.node)),
                    format!(
                        "workload `{}/{}`: node {} does not exist (the scenario has nodes: {})",
                        w.namespace, w.name, w.node, self.nodes
                    ),
                ));
            }
            check_servers(
                &w.servers,
                &format!("workload `{}/{}`", w.namespace, w.name),
            )?;
            if w.host_network {
                for s in &w.servers {
                    if !host_ports.insert((w.node, s.port, s.protocol)) {
                        return Err((
                            Some(format!("port: {}", s.port)),
                            format!(
                                "two hostNetwork servers use {}/{} on the node",
                                s.port,
                                s.protocol.as_str()
                            ),
                        ));
                    }
                }
            }
        }
        let per_ns = self.workloads.iter().fold(BTreeMap::new(), |mut m, w| {
            *m.entry(&w.namespace).or_insert(0u32) += if w.host_network { 0 } else { w.replicas };
            m
        });
        if let Some((ns, n)) = per_ns.iter().find(|(_, n)| **n > 240) {
            return Err((
                None,
                format!("namespace `{ns}` has {n} pods; at most 240 fit a /24"),
            ));
        }
        for h in &self.world {
            let o = h.address.octets();
            if o[0] != 198 || o[1] != 19 {
                return Err((
                    Some(h.address.to_string()),
                    format!("world address {} must be inside 198.19.0.0/16", h.address),
                ));
            }
            check_servers(&h.servers, &format!("world host {}", h.address))?;
        }
        if self.servers_of_kind(ServerKind::Dns) > 1 {
            return Err((
                None,
                "at most one workload may run the DNS responder (kind: dns)".into(),
            ));
        }
        for w in &self.workloads {
            for c in &w.clients {
                self.check_client(w, c)?;
            }
        }
        Ok(())
    }

    fn servers_of_kind(&self, kind: ServerKind) -> usize {
        self.workloads
            .iter()
            .filter(|w| w.servers.iter().any(|s| s.kind == kind))
            .count()
    }

    fn check_client(&self, w: &Workload, c: &Client) -> Result<(), (Option<String>, String)> {
        let needle = Some(c.target.clone());
        let who = format!("client of `{}/{}`", w.namespace, w.name);
        let target = self
            .target(&c.target)
            .map_err(|m| (needle.clone(), format!("{who}: {m}")))?;
        if !(c.rate > 0.0 && c.rate <= 1000.0) {
            return Err((
                needle,
                format!(
                    "{who} -> {}: rate must be >0 and <=1000 per second",
                    c.target
                ),
            ));
        }
        let server = self.server_for(&target, c.protocol).ok_or_else(|| {
            let what = match &target {
                Target::Workload {
                    namespace,
                    workload,
                    ..
                } => {
                    if self.workload(namespace, workload).is_none() {
                        format!("no workload `{namespace}/{workload}` in this scenario")
                    } else {
                        format!("`{namespace}/{workload}` has no server on that port")
                    }
                }
                Target::World { address, .. } => {
                    format!("no world host {address} with a server on that port (see `world`)")
                }
                Target::Named { name, .. } => format!(
                    "no world host named `{name}` with a server on that port (see `world`, `name:`)"
                ),
            };
            (needle.clone(), format!("{who} -> {}: {what}", c.target))
        })?;
        if server.kind == ServerKind::Http {
            if let Some(m) = &c.method {
                check_method(m).map_err(|e| (needle.clone(), format!("{who}: {e}")))?;
            }
            if c.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
                return Err((needle, format!("{who}: path must start with `/`")));
            }
        } else if c.method.is_some() || c.path.is_some() {
            return Err((
                needle,
                format!(
                    "{who} -> {}: method/path only apply to an http server",
                    c.target
                ),
            ));
        }
        Ok(())
    }
}

fn check_servers(servers: &[Server], who: &str) -> Result<(), (Option<String>, String)> {
    let mut seen = BTreeSet::new();
    for s in servers {
        let needle = Some(format!("port: {}", s.port));
        if s.port == 0 {
            return Err((needle, format!("{who}: port 0 is not a valid port")));
        }
        if !seen.insert((s.port, s.protocol)) {
            return Err((
                needle,
                format!("{who}: two servers on {}/{}", s.port, s.protocol.as_str()),
            ));
        }
        if s.kind == ServerKind::Http && s.protocol != Protocol::Tcp {
            return Err((needle, format!("{who}: an http server needs protocol tcp")));
        }
        if s.kind != ServerKind::Http && !s.routes.is_empty() {
            return Err((needle, format!("{who}: routes only apply to kind http")));
        }
        for r in &s.routes {
            check_method(&r.method).map_err(|e| (Some(r.path.clone()), format!("{who}: {e}")))?;
            if !r.path.starts_with('/') {
                return Err((
                    Some(r.path.clone()),
                    format!("{who}: route path `{}` must start with `/`", r.path),
                ));
            }
            if !(100..=599).contains(&r.status) {
                return Err((
                    Some(r.path.clone()),
                    format!("{who}: status {} is not 100-599", r.status),
                ));
            }
        }
    }
    Ok(())
}

fn check_method(m: &str) -> Result<(), String> {
    const METHODS: [&str; 8] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT",
    ];
    if METHODS.contains(&m) {
        Ok(())
    } else {
        Err(format!(
            "method `{m}`: expected one of {}",
            METHODS.join(", ")
        ))
    }
}

fn check_dns_label(name: &str, what: &str) -> Result<(), (Option<String>, String)> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err((
            Some(name.to_string()),
            format!("{what} `{name}`: expected a DNS label (lowercase letters, digits, `-`, at most 63)"),
        ))
    }
}

/// 1-based line of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> Option<usize> {
    text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
}

#[cfg(test)]
mod tests;
