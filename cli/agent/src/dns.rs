//! The agent's DNS half: the transparent DNS proxy in the node namespace,
//! asking the compiled policy's `rules.dns` (the client's egress side,
//! where Cilium puts DNS rules) and the pinned mode of the client's
//! namespace; its answers feed [`crate::fqdn::FqdnCache`].

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};

use cnpilot_bpf::maps::Direction;
use cnpilot_bpf::Tables;
use cnpilot_proxy::dns::udp::bind_transparent_udp;
use cnpilot_proxy::dns::{DnsEvent, DnsPolicy, DnsProxy, DnsProxyConfig, LearnRequest, Query};
use cnpilot_proxy::listener::bind_transparent;
use cnpilot_proxy::netns::spawn_in_netns;
use cnpilot_proxy::policy::{Identity, L7Decision};
use cnpilot_recommender::compile::Outcome;
use tokio::sync::mpsc;

use std::io::Write;
use std::time::Instant;

use crate::error::Context;
use crate::events;
use crate::inventory::Inventory;
use crate::l7::{
    describe, netns_name, CompiledIdentities, NamespaceOfIdentity, PinnedModes, PolicySlot,
};
use crate::maps::reprogram_policy;
use crate::run::{compile, error_chain, staged_now, write_line, Agent};

pub const DEFAULT_DNS_PROXY_PORT: u16 = 15053;

struct CompiledDns(Arc<PolicySlot>);

impl DnsPolicy for CompiledDns {
    fn decide(
        &self,
        src: Identity,
        dst: Identity,
        proto: u8,
        dport: u16,
        qname: &str,
    ) -> L7Decision {
        let p = self.0.current();
        if !p.is_local_subject(src) {
            return L7Decision::Allow {
                rule: "not a pod of this node".into(),
            };
        }
        let side = p.check_dns(Direction::Egress, src, dst, proto, dport, qname);
        match side.outcome {
            Outcome::L7Denied => L7Decision::Deny {
                reason: format!("no dns rule matches ({})", describe(&p, side.rule)),
            },
            Outcome::L7Allowed => L7Decision::Allow {
                rule: describe(&p, side.rule),
            },
            // No rules.dns on this side: here for visibility only. L3/L4
            // outcomes were the kernel's to enforce.
            _ => L7Decision::Allow {
                rule: "visibility (no rules.dns)".into(),
            },
        }
    }

    /// As in Cilium, only an answer to a query a `rules.dns` rule let
    /// through teaches `toFQDNs` (a query here for visibility only, or one
    /// audit lets pass that enforce would refuse, does not), and only names
    /// some `toFQDNs` selector matches are kept
    /// ([`crate::fqdn::FqdnCache::learn`]); other answers need not wait for
    /// the agent's loop.
    fn learns(&self, q: &Query<'_>, names: &[String]) -> bool {
        let p = self.0.current();
        if !p.is_local_subject(q.src_identity) {
            return false;
        }
        let side = p.check_dns(
            Direction::Egress,
            q.src_identity,
            q.dst_identity,
            q.proto,
            q.dport,
            q.qname,
        );
        side.outcome == Outcome::L7Allowed && names.iter().any(|n| p.fqdn_selects(n))
    }
}

/// The proxy's two outputs: one event per query, and the answers whose
/// addresses must reach the datapath before the pod sees them.
pub struct DnsChannels {
    pub events: mpsc::Receiver<DnsEvent>,
    pub learned: mpsc::Receiver<LearnRequest>,
}

/// Starts the DNS proxy on a thread inside the node namespace, on UDP and
/// TCP 0.0.0.0:`port`. Returns once both are bound.
pub fn start_dns_proxy(
    inv: &Inventory,
    compiled: Arc<PolicySlot>,
    ns_of_identity: NamespaceOfIdentity,
    pin_dir: &Path,
    port: u16,
) -> crate::Result<DnsChannels> {
    let ns = netns_name(&inv.node_netns)?;
    let modes = PinnedModes {
        tables: Mutex::new(Tables::open_pinned(pin_dir)?),
        ns_of_identity,
    };
    let (events_tx, events) = mpsc::channel(4096);
    let (learn_tx, learned) = mpsc::channel(256);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<crate::Result<()>>();
    let _detached = spawn_in_netns(&ns, move || {
        type Started = (
            tokio::runtime::Runtime,
            std::net::UdpSocket,
            std::net::TcpListener,
        );
        let started = (|| -> crate::Result<Started> {
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            let listener = bind_transparent_udp(addr, true)
                .with_context(|| format!("binding the DNS proxy on UDP port {port}"))?;
            let tcp_listener = bind_transparent(addr)
                .with_context(|| format!("binding the DNS proxy on TCP port {port}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .thread_name("cnpilot-dns")
                .enable_all()
                .build()
                .context("starting the DNS proxy runtime")?;
            Ok((rt, listener, tcp_listener))
        })();
        let (rt, listener, tcp_listener) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        rt.block_on(async move {
            let proxy = Arc::new(DnsProxy::new(
                DnsProxyConfig::default(),
                Arc::new(CompiledIdentities(Arc::clone(&compiled))),
                Arc::new(CompiledDns(compiled)),
                Arc::new(modes),
                events_tx,
                Some(learn_tx),
            ));
            let _ = ready_tx.send(Ok(()));
            let tcp = tokio::spawn(Arc::clone(&proxy).serve_tcp(tcp_listener));
            if let Err(e) = proxy.serve(listener).await {
                tracing::error!(error = %e, "the DNS proxy stopped");
            }
            tcp.abort();
        });
    });
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(DnsChannels { events, learned }),
        Ok(Err(e)) => Err(crate::AgentError::Context {
            what: format!("starting the DNS proxy in {ns}"),
            source: Box::new(e),
        }),
        Err(_) => crate::error::bail!("the DNS proxy thread in {ns} ended before listening"),
    }
}

/// Whether `--drops-only` keeps a DNS record.
pub fn is_drop(ev: &DnsEvent) -> bool {
    ev.verdict != cnpilot_proxy::event::L7Verdict::Allowed
}

impl Agent {
    pub(crate) fn on_dns(
        &mut self,
        ev: cnpilot_proxy::dns::DnsEvent,
        dropped: bool,
        drops_only: bool,
        out: &mut Box<dyn Write + Send>,
    ) -> crate::Result<()> {
        let live = self.hub.has_clients();
        let to_file = !drops_only || dropped;
        if live || to_file {
            let text: Arc<str> = serde_json::to_string(&events::dns_line(&ev, &self.inv, &self.cx))
                .context("encoding a DNS event")?
                .into();
            if live {
                self.hub.publish(&text);
            }
            if to_file {
                write_line(out, &text)?;
                out.flush().context("writing events")?;
            }
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.record_dns(ev)?;
        }
        Ok(())
    }

    /// An answer the DNS proxy holds: its addresses get FQDN identities
    /// (when a `toFQDNs` selector wants their names) and reach the maps
    /// before the proxy releases the answer to the pod.
    pub(crate) fn on_learned(&mut self, request: cnpilot_proxy::dns::LearnRequest) {
        let compiled = self.slot.current();
        let learned = &request.learned;
        if self.fqdns.learn(
            &learned.names,
            &learned.ips,
            learned.ttl.max(self.config.fqdn_min_ttl),
            Instant::now(),
            |name| compiled.fqdn_selects(name),
        ) {
            self.recompile(&format!("learned {}", learned.names.join(" -> ")));
        }
        let _ = request.done.send(());
    }

    /// Compiles again with what DNS taught and reprograms the maps; a
    /// failure keeps the maps as they are.
    pub(crate) fn recompile(&mut self, why: &str) {
        let result = staged_now(&self.config).and_then(|staged| {
            let entries = compile(&self.config, &staged, &self.inv, &self.fqdns)?;
            reprogram_policy(&mut self.dp, &self.inv, &entries)?;
            self.slot.replace(Arc::clone(&entries.compiled));
            Ok(())
        });
        match result {
            Ok(()) => tracing::debug!("{why}: {} FQDN addresses in the ipcache", self.fqdns.len()),
            Err(e) => tracing::warn!("{why}: recompiling failed: {}", error_chain(&e)),
        }
    }
}
