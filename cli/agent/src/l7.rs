//! The agent's L7 half: the node-namespace route that delivers connections
//! the datapath hands to the proxy (`bpf_sk_assign` + mark), and the proxy
//! itself, wired to the compiled policy, the ipcache and the pinned modes.
//!
//! Who decides what: the kernel already decided L3/L4 (per namespace mode)
//! before a connection reaches the proxy, so the proxy asks only the L7
//! question: on each side that redirected (the destination's ingress, the
//! source's egress), does an HTTP rule match this request? The mode that
//! turns a "no" into a 403 is the destination namespace's, read from the
//! pinned `ns_mode` map per request, so `cnpilot mode` applies to the next
//! request of an open connection.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::Context;
use cnpilot_bpf::maps::{identity, mark, Direction};
use cnpilot_bpf::{Mode, Tables};
use cnpilot_recommender::compile::{HttpRequest, Outcome};
use cnpilot_recommender::CompiledPolicy;
use tokio::sync::mpsc;

use crate::inventory::Inventory;
use cnpilot_proxy::event::L7Event;
use cnpilot_proxy::listener::{bind_transparent, L7Proxy, ProxyConfig};
use cnpilot_proxy::netns::spawn_in_netns;
use cnpilot_proxy::policy::{
    HttpRequestView, Identity, IdentityResolver, L7Decision, L7Mode, L7Policy, ModeResolver,
};

pub const DEFAULT_PROXY_PORT: u16 = 15001;
const TCP: u8 = 6;

/// The `ip netns` name of a namespace path (`/run/netns/NAME`).
/// The proxy's routes and sysctl go into a *named* node namespace (`ip -n`):
/// the lab's. On a node whose own namespace is the node namespace they
/// would change the host's routing, which this version does not do yet.
pub(crate) fn netns_name(netns: &Path) -> crate::Result<String> {
    let named = matches!(
        netns.parent().and_then(|p| p.to_str()),
        Some("/run/netns" | "/var/run/netns")
    );
    crate::error::ensure!(
        named,
        "the L7 proxy runs in a named node namespace (/run/netns/NAME) only for now, not in {}: \
         run the agent with --proxy-port 0 --dns-proxy-port 0 (HTTP and DNS rules and visibility are then not enforced)",
        netns.display()
    );
    netns
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} is not a named network namespace", netns.display()))
}

/// `ip -n NETNS args…`: its stdout, or an error with its stderr.
fn ip(netns: &str, args: &[&str]) -> crate::Result<String> {
    let mut all = vec!["-n", netns];
    all.extend_from_slice(args);
    Ok(cnpilot_bpf::sys::run("ip", &all, None)?)
}

/// `ip rule fwmark TO_PROXY lookup T` + `local 0.0.0.0/0 dev lo table T`,
/// in the node namespace only (never the host's), and early demux off
/// there ([`disable_early_demux`]). Idempotent.
pub fn install_proxy_route(node_netns: &Path) -> crate::Result<()> {
    let ns = netns_name(node_netns)?;
    disable_early_demux(&ns)?;
    let fwmark = format!("{:#x}/{:#x}", mark::TO_PROXY, mark::MAGIC_MASK);
    let table = mark::PROXY_ROUTE_TABLE.to_string();
    if !ip(&ns, &["rule", "show"])?.contains(&format!("lookup {table}")) {
        ip(&ns, &["rule", "add", "fwmark", &fwmark, "lookup", &table])?;
    }
    ip(
        &ns,
        &[
            "route",
            "replace",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            &table,
        ],
    )?;
    Ok(())
}

/// `net.ipv4.tcp_early_demux=0` in the node namespace (issue 18). The proxy
/// leaves a TIME_WAIT socket per connection it closed first, with the pod's
/// address and the client's port as its tuple, for 60 s. Early demux looks
/// every incoming TCP segment up in the established hash *before routing*,
/// time-wait sockets included, and attaches the socket it finds; a segment
/// that is then routed on to the pod (the agent is down, or the client's
/// namespace is `off`, so nothing hands it to the proxy) carries a socket
/// into ip_forward, which drops it. Measured on the seed lab after
/// `agent --down` with ~1,500 of them left: `ab -c 1` to the same pod stalls
/// at once with early demux on, 20,000/20,000 twice with it off. A routing
/// node namespace loses nothing by it (its forwarded traffic never had a
/// socket to find; its own few sockets take the normal lookup). The lab sets
/// it at `lab up` too, so it holds before any agent ran and after one left.
pub fn disable_early_demux(ns: &str) -> crate::Result<()> {
    cnpilot_bpf::sys::run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_early_demux=0",
        ],
        None,
    )?;
    Ok(())
}

/// Undoes [`install_proxy_route`]; a namespace that is gone is fine.
pub fn remove_proxy_route(node_netns: &Path) {
    let Ok(ns) = netns_name(node_netns) else {
        return;
    };
    let fwmark = format!("{:#x}/{:#x}", mark::TO_PROXY, mark::MAGIC_MASK);
    let table = mark::PROXY_ROUTE_TABLE.to_string();
    let _ = ip(&ns, &["rule", "del", "fwmark", &fwmark, "lookup", &table]);
    let _ = ip(&ns, &["route", "flush", "table", &table]);
}

/// The compiled policy the proxy decides with; a reload swaps it whole, so
/// a request sees one revision or the next, never a mix.
#[derive(Debug, Default)]
pub struct PolicySlot(std::sync::RwLock<Arc<CompiledPolicy>>);

impl PolicySlot {
    pub fn new(compiled: Arc<CompiledPolicy>) -> Self {
        Self(std::sync::RwLock::new(compiled))
    }

    pub fn current(&self) -> Arc<CompiledPolicy> {
        match self.0.read() {
            Ok(p) => Arc::clone(&p),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace(&self, compiled: Arc<CompiledPolicy>) {
        match self.0.write() {
            Ok(mut p) => *p = compiled,
            Err(poisoned) => *poisoned.into_inner() = compiled,
        }
    }
}

pub(crate) struct CompiledIdentities(pub(crate) Arc<PolicySlot>);

impl IdentityResolver for CompiledIdentities {
    fn identity_of(&self, ip: IpAddr) -> Identity {
        match ip {
            IpAddr::V4(v4) => self.0.current().identity_of_addr(v4),
            IpAddr::V6(_) => identity::WORLD,
        }
    }
}

/// The L7 question of the compiled policy, one side at a time: a side that
/// redirected at L4 must have an HTTP rule matching the request.
struct CompiledL7(Arc<PolicySlot>);

pub(crate) fn describe(p: &CompiledPolicy, rule: Option<u32>) -> String {
    rule.and_then(|r| p.rule(r))
        .map_or_else(|| "no rule".to_string(), ToString::to_string)
}

impl L7Policy for CompiledL7 {
    fn has_http_rules(&self, src: Identity, dst: Identity, dport: u16) -> bool {
        let p = self.0.current();
        let redirected = |side: cnpilot_recommender::Side| side.outcome == Outcome::L7Allowed;
        (p.is_local_subject(dst)
            && redirected(p.check(Direction::Ingress, dst, src, TCP, dport, None)))
            || (p.is_local_subject(src)
                && redirected(p.check(Direction::Egress, src, dst, TCP, dport, None)))
    }

    fn decide(
        &self,
        src: Identity,
        dst: Identity,
        dport: u16,
        request: &HttpRequestView<'_>,
    ) -> L7Decision {
        let req = HttpRequest {
            method: request.method.to_string(),
            path: request.envoy_path.to_string(),
            host: request.host.map(str::to_string),
            headers: request
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<BTreeMap<_, _>>(),
        };
        let p = self.0.current();
        let sides = [
            p.is_local_subject(dst)
                .then(|| p.check(Direction::Ingress, dst, src, TCP, dport, Some(&req))),
            p.is_local_subject(src)
                .then(|| p.check(Direction::Egress, src, dst, TCP, dport, Some(&req))),
        ];
        let mut allowed_by = None;
        for side in sides.into_iter().flatten() {
            match side.outcome {
                Outcome::L7Denied => {
                    return L7Decision::Deny {
                        reason: format!("no http rule matches ({})", describe(&p, side.rule)),
                    }
                }
                Outcome::L7Allowed => allowed_by = allowed_by.or(side.rule),
                // L3/L4 outcomes were the kernel's to enforce, per mode.
                _ => {}
            }
        }
        L7Decision::Allow {
            rule: describe(&p, allowed_by),
        }
    }
}

/// The destination namespace's mode, read from the pinned map per request.
pub(crate) struct PinnedModes {
    pub(crate) tables: Mutex<Tables>,
    /// Replaced by the agent when its inventory changes.
    pub(crate) ns_of_identity: NamespaceOfIdentity,
}

/// Local identities → `ns_mode` key, shared with the agent.
pub type NamespaceOfIdentity = Arc<std::sync::RwLock<HashMap<Identity, u32>>>;

impl ModeResolver for PinnedModes {
    fn mode_for(&self, _dst_ip: IpAddr, dst_identity: Identity) -> L7Mode {
        let ns = match self.ns_of_identity.read() {
            Ok(map) => map.get(&dst_identity).copied(),
            Err(poisoned) => poisoned.into_inner().get(&dst_identity).copied(),
        };
        let Some(ns) = ns else {
            // Not a pod of this node: the proxy asks for the client's mode
            // instead (`is_local`); for an unknown client, record only.
            return L7Mode::Audit;
        };
        let mode = match self.tables.lock() {
            Ok(t) => t.mode(ns),
            Err(poisoned) => poisoned.into_inner().mode(ns),
        };
        match mode {
            Ok(Mode::Enforce) => L7Mode::Enforce,
            Ok(_) => L7Mode::Audit,
            Err(e) => {
                // The maps are gone (agent --down): fail closed.
                tracing::warn!(error = %e, "reading the namespace mode for the L7 proxy");
                L7Mode::Enforce
            }
        }
    }

    fn is_local(&self, identity: Identity) -> bool {
        match self.ns_of_identity.read() {
            Ok(map) => map.contains_key(&identity),
            Err(poisoned) => poisoned.into_inner().contains_key(&identity),
        }
    }
}

/// Starts the proxy on a thread inside the node namespace, listening
/// (IP_TRANSPARENT) on 0.0.0.0:`port`. Returns once it is listening; its
/// events arrive on the returned channel. It runs until the process exits.
pub fn start_proxy(
    inv: &Inventory,
    compiled: Arc<PolicySlot>,
    ns_of_identity: NamespaceOfIdentity,
    pin_dir: &Path,
    port: u16,
) -> crate::Result<mpsc::Receiver<L7Event>> {
    let ns = netns_name(&inv.node_netns)?;
    let modes = PinnedModes {
        tables: Mutex::new(Tables::open_pinned(pin_dir)?),
        ns_of_identity,
    };
    let (events_tx, events_rx) = mpsc::channel(4096);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<crate::Result<()>>();
    let pin_dir = pin_dir.to_path_buf();
    let _detached = spawn_in_netns(&ns, move || {
        let started = (|| -> crate::Result<(tokio::runtime::Runtime, std::net::TcpListener)> {
            let listener =
                bind_transparent(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
            // Where the sk_lookup program finds it (time-wait reuse).
            cnpilot_bpf::register_proxy_listener(&pin_dir, &listener)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("cnpilot-l7")
                .enable_all()
                .build()
                .context("starting the L7 proxy runtime")?;
            Ok((rt, listener))
        })();
        let (rt, listener) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            let proxy = L7Proxy::new(
                ProxyConfig::transparent(),
                Arc::new(CompiledIdentities(Arc::clone(&compiled))),
                Arc::new(CompiledL7(compiled)),
                Arc::new(modes),
                events_tx,
            );
            let _ = ready_tx.send(Ok(()));
            if let Err(e) = proxy.serve(listener).await {
                tracing::error!(error = %e, "the L7 proxy stopped");
            }
        });
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(events_rx),
        Ok(Err(e)) => Err(crate::AgentError::Context {
            what: format!("starting the L7 proxy in {ns}"),
            source: Box::new(e),
        }),
        Err(_) => crate::error::bail!("the L7 proxy thread in {ns} ended before listening"),
    }
}

/// The identity → namespace map the proxy reads modes with.
pub fn namespaces_of(inv: &Inventory) -> HashMap<Identity, u32> {
    inv.pods.iter().map(|p| (p.identity, p.ns_id)).collect()
}
