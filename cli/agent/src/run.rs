//! [`Agent::start`] and the event loop of [`Agent::run`].

use std::io::Write;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use cnpilot_bpf::maps::verdict;
use cnpilot_bpf::{Datapath, EventReader, Tables};
use cnpilot_learner::inventory::{InventorySnapshot, InventorySource};
use cnpilot_learner::IdentityAllocator;
use cnpilot_proxy::event::{L7Event, L7Verdict};
use tokio::sync::mpsc;

use crate::error::Context;
use crate::fqdn::FqdnCache;
use crate::inventory::{self, Inventory};
use crate::maps::{attach_host, attach_pod, churn, program_maps, reprogram_policy};
use crate::socket::{self, Hub, ReloadRequest};
use crate::store::{StoreSummary, StoreThread};
use crate::{dns, events, l7, ns_id, policy, store, AgentConfig, Notice, StagedSet};

/// How often the agent reads its inventory again (pod churn is picked up
/// within this plus the time to attach: well under the 2 s a new pod may
/// wait).
const INVENTORY_REFRESH: Duration = Duration::from_millis(500);

/// A started agent: attached, maps programmed, proxy listening, socket
/// bound. [`Agent::run`] streams its events until told to stop.
pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) _instance: crate::instance::Instance,
    pub(crate) source: Box<dyn InventorySource>,
    pub(crate) snapshot: InventorySnapshot,
    pub(crate) identities: IdentityAllocator,
    pub(crate) inv: Inventory,
    pub(crate) dp: Datapath,
    pub(crate) reader: EventReader,
    pub(crate) slot: Arc<l7::PolicySlot>,
    pub(crate) ns_of_identity: l7::NamespaceOfIdentity,
    pub(crate) http_events: Option<mpsc::Receiver<L7Event>>,
    pub(crate) dns_events: Option<mpsc::Receiver<cnpilot_proxy::dns::DnsEvent>>,
    pub(crate) dns_learned: Option<mpsc::Receiver<cnpilot_proxy::dns::LearnRequest>>,
    pub(crate) fqdns: FqdnCache,
    pub(crate) hub: Arc<Hub>,
    pub(crate) reloads: mpsc::Receiver<ReloadRequest>,
    pub(crate) sink: Option<StoreThread>,
    pub(crate) cx: events::LineContext,
    pub(crate) started: Started,
}

/// What [`Agent::start`] did.
#[derive(Debug, Clone)]
pub struct Started {
    pub pods_attached: usize,
    pub policy_entries: usize,
    /// Every namespace of this node with its mode.
    pub modes: Vec<(String, String)>,
}

/// Where [`Agent::run`]'s event lines go and for how long it runs.
pub struct RunOptions {
    /// `None`: until SIGINT or SIGTERM.
    pub duration: Option<Duration>,
    /// One JSON object per line.
    pub events: Box<dyn Write + Send>,
    /// Only would-drop and drop events go to `events` (the socket and the
    /// store still get everything).
    pub drops_only: bool,
}

/// Reported to [`Agent::run`]'s progress callback four times a second.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub seen: u64,
    pub drops: u64,
}

/// What [`Agent::run`] saw.
#[derive(Debug, Clone)]
pub struct Stopped {
    pub seen: u64,
    pub drops: u64,
    /// Flows in the datapath's counters at the end.
    pub flows: usize,
    /// The flow store's summary, when there is a store.
    pub store: Option<StoreSummary>,
}

impl Agent {
    /// Starts the agent on `source`'s inventory. Must be called inside a
    /// tokio runtime (the socket and the event reader live on it).
    pub fn start(
        mut config: AgentConfig,
        source: impl InventorySource + 'static,
    ) -> crate::Result<Agent> {
        let instance = crate::instance::acquire(&config.pin_dir)?;
        let source: Box<dyn InventorySource> = Box::new(source);
        let snapshot = source
            .snapshot()
            .with_context(|| format!("reading the inventory ({})", source.describe()))?;
        let mut identities = IdentityAllocator::new();
        let mut inv = Inventory::build(
            &snapshot,
            &config.node_name,
            &config.node_netns,
            &mut identities,
        )?;
        inv.host_devices = crate::host::devices(&config.host_firewall, &inv)?;
        for pod in &inv.unrouted {
            (config.notices)(Notice::Unrouted(pod.clone()));
        }
        let staged = staged_now(&config)?;
        for ns in &staged.namespaces {
            (config.notices)(Notice::StagedPolicies {
                namespace: ns.namespace.clone(),
                dir: ns.dir.clone(),
            });
        }
        let fqdns = FqdnCache::default();
        let entries = compile(&config, &staged, &inv, &fqdns)?;

        store::fresh_event_ring(&config.pin_dir);
        let mut dp =
            Datapath::load_or_open_with(&config.pin_dir, Some(config.ring_buffer_mib << 20))?;
        let kept = program_maps(&mut dp, &inv, &entries, config.mode, &staged.keep_mode)?;
        for notice in kept {
            (config.notices)(notice);
        }
        let slot = Arc::new(l7::PolicySlot::new(Arc::clone(&entries.compiled)));
        let ns_of_identity: l7::NamespaceOfIdentity =
            Arc::new(RwLock::new(l7::namespaces_of(&inv)));
        // The proxy listens before any program can hand it a connection.
        let http_events = match config.proxy_port {
            0 => None,
            port => {
                l7::install_proxy_route(&inv.node_netns)?;
                Some(l7::start_proxy(
                    &inv,
                    Arc::clone(&slot),
                    Arc::clone(&ns_of_identity),
                    &config.pin_dir,
                    port,
                )?)
            }
        };
        let (dns_events, dns_learned) = match config.dns_proxy_port {
            0 => (None, None),
            port => {
                l7::install_proxy_route(&inv.node_netns)?;
                let ch = dns::start_dns_proxy(
                    &inv,
                    Arc::clone(&slot),
                    Arc::clone(&ns_of_identity),
                    &config.pin_dir,
                    port,
                )?;
                (Some(ch.events), Some(ch.learned))
            }
        };
        if http_events.is_some() {
            dp.attach_proxy_lookup(&inv.node_netns)
                .context("attaching the proxy's sk_lookup program to the node namespace")?;
        }
        for pod in &inv.pods {
            attach_pod(&mut dp, &inv.node_netns, pod)?;
        }
        for dev in &inv.host_devices {
            attach_host(&mut dp, &inv.node_netns, dev)?;
        }
        if !inv.host_devices.is_empty() {
            (config.notices)(Notice::HostDevices {
                attached: inv.host_devices.iter().map(|d| d.name.clone()).collect(),
                detached: Vec::new(),
            });
        }
        let reader = dp.events()?;
        let (hub, reloads) = socket::serve(&config.socket)?;
        let cx = events::LineContext::new(inv.node_name.clone());
        let sink = match &config.store {
            Some(dir) => Some(StoreThread::spawn(store::StoreSink::open(
                dir,
                &snapshot,
                &config.node_name,
                dp.tables(),
            )?)?),
            None => None,
        };
        let modes = modes_of(dp.tables(), &inv);
        hub.set_modes(modes.iter().cloned().collect());
        let started = Started {
            pods_attached: inv.pods.len(),
            policy_entries: entries.policy.len(),
            modes,
        };
        Ok(Agent {
            config,
            _instance: instance,
            source,
            snapshot,
            identities,
            inv,
            dp,
            reader,
            slot,
            ns_of_identity,
            http_events,
            dns_events,
            dns_learned,
            fqdns,
            hub,
            reloads,
            sink,
            cx,
            started,
        })
    }

    /// What the start did.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Streams events until the duration ends, SIGINT or SIGTERM. The
    /// programs stay attached and pinned afterwards (enforcement goes on;
    /// [`crate::down`] removes them).
    pub async fn run(
        mut self,
        mut options: RunOptions,
        mut progress: impl FnMut(Progress),
    ) -> crate::Result<Stopped> {
        let (mut seen, mut drops) = (0u64, 0u64);
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut refresh = tokio::time::interval(INVENTORY_REFRESH);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        let deadline = async {
            match options.duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let out = &mut options.events;
        let result: crate::Result<()> = async {
            loop {
                tokio::select! {
                    batch = self.reader.next_batch() => {
                        let batch = batch?;
                        if let Some(sink) = self.sink.as_mut() {
                            sink.record_events(batch.clone())?;
                        }
                        let live = self.hub.has_clients();
                        for ev in batch {
                            seen += 1;
                            let dropped = ev.verdict == verdict::WOULD_DROP || ev.verdict == verdict::DROPPED;
                            drops += u64::from(dropped);
                            if dropped {
                                if let Some(ns) = self.inv.namespace_of_ns_id(ev.ns_id) {
                                    self.hub.count(ns, if ev.verdict == verdict::DROPPED {
                                        socket::Denial::Dropped
                                    } else {
                                        socket::Denial::WouldDrop
                                    });
                                }
                            }
                            let to_file = !options.drops_only || dropped;
                            if !to_file && !live {
                                continue;
                            }
                            let text: Arc<str> = serde_json::to_string(&events::line(&ev, &self.inv, &self.cx))
                                .context("encoding an event")?
                                .into();
                            if live {
                                self.hub.publish(&text);
                            }
                            if to_file {
                                write_line(out, &text)?;
                            }
                        }
                        out.flush().context("writing events")?;
                    }
                    Some(ev) = async {
                        match self.http_events.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        seen += 1;
                        let dropped = events::http_is_drop(&ev);
                        drops += u64::from(dropped);
                        self.on_http(&ev, dropped, options.drops_only, out)?;
                    }
                    Some(ev) = async {
                        match self.dns_events.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        seen += 1;
                        let dropped = dns::is_drop(&ev);
                        drops += u64::from(dropped);
                        self.on_dns(ev, dropped, options.drops_only, out)?;
                    }
                    Some(request) = async {
                        match self.dns_learned.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    } => self.on_learned(request),
                    _ = refresh.tick() => {
                        self.refresh()?;
                        if self.fqdns.expire(Instant::now()) {
                            self.recompile("DNS names expired");
                        }
                    }
                    Some(request) = self.reloads.recv() => self.reload(request),
                    _ = tick.tick() => {
                        self.publish_modes();
                        progress(Progress { elapsed: started.elapsed(), seen, drops });
                    }
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    _ = &mut deadline => break,
                }
            }
            Ok(())
        }
        .await;
        let _ = std::fs::remove_file(&self.config.socket);
        result?;
        out.flush().context("writing events")?;
        let flows = self.dp.tables().read_counters()?.len();
        let store = match self.sink.take() {
            Some(sink) => Some(sink.join()?.finish(self.dp.tables())?),
            None => None,
        };
        Ok(Stopped {
            seen,
            drops,
            flows,
            store,
        })
    }

    fn on_http(
        &mut self,
        ev: &L7Event,
        dropped: bool,
        drops_only: bool,
        out: &mut Box<dyn Write + Send>,
    ) -> crate::Result<()> {
        if let Some(sink) = self.sink.as_mut() {
            sink.record_l7(ev.clone())?;
        }
        if dropped {
            let pods = &self.inv.pods;
            let ns = pods
                .iter()
                .find(|p| p.identity == ev.dst_identity)
                .or_else(|| pods.iter().find(|p| p.identity == ev.src_identity))
                .map(|p| p.namespace.clone());
            if let Some(ns) = ns {
                self.hub.count(
                    &ns,
                    match ev.verdict {
                        L7Verdict::Denied => socket::Denial::L7Denied,
                        _ => socket::Denial::L7WouldDeny,
                    },
                );
            }
        }
        let live = self.hub.has_clients();
        let to_file = !drops_only || dropped;
        if live || to_file {
            let text: Arc<str> = serde_json::to_string(&events::http_line(ev, &self.inv, &self.cx))
                .context("encoding an HTTP event")?
                .into();
            if live {
                self.hub.publish(&text);
            }
            if to_file {
                write_line(out, &text)?;
                out.flush().context("writing events")?;
            }
        }
        Ok(())
    }

    /// Reads the inventory again and applies what changed: detach, remap,
    /// attach (see [`churn`]). A bad read or build keeps the last inventory.
    fn refresh(&mut self) -> crate::Result<()> {
        let next = match self.source.snapshot() {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(
                    "inventory ({}): {e}; keeping the last one",
                    self.source.describe()
                );
                return Ok(());
            }
        };
        // Unrouted pods may have been wired since: look again.
        if next == self.snapshot && self.inv.unrouted.is_empty() {
            return Ok(());
        }
        let changed_at = Instant::now();
        let built = Inventory::build(
            &next,
            &self.config.node_name,
            &self.config.node_netns,
            &mut self.identities,
        )
        .and_then(|mut new_inv| {
            new_inv.host_devices = crate::host::devices(&self.config.host_firewall, &new_inv)?;
            Ok(new_inv)
        });
        let new_inv = match built {
            Ok(new_inv) => new_inv,
            Err(e) => {
                tracing::warn!("inventory: {e}; keeping the last one");
                return Ok(());
            }
        };
        let changes = inventory::Changes::between(&self.inv, &new_inv);
        if next != self.snapshot {
            if let Some(sink) = self.sink.as_mut() {
                sink.set_inventory(next.clone(), self.config.node_name.clone())?;
            }
        }
        self.snapshot = next;
        if changes.is_empty()
            && new_inv.pods == self.inv.pods
            && new_inv.namespaces == self.inv.namespaces
        {
            self.inv = new_inv;
            return Ok(());
        }
        let staged = staged_now(&self.config)?;
        let entries = compile(&self.config, &staged, &new_inv, &self.fqdns)?;
        churn(
            &mut self.dp,
            &self.config.pin_dir,
            &changes,
            &new_inv,
            &entries,
            &staged.keep_mode,
        )?;
        self.slot.replace(Arc::clone(&entries.compiled));
        match self.ns_of_identity.write() {
            Ok(mut map) => *map = l7::namespaces_of(&new_inv),
            Err(poisoned) => *poisoned.into_inner() = l7::namespaces_of(&new_inv),
        }
        let names = |pods: &[inventory::Pod]| {
            pods.iter()
                .map(|p| format!("{}/{} ({}, {})", p.namespace, p.name, p.ip, p.host_veth))
                .collect::<Vec<_>>()
        };
        if !changes.detach.is_empty() {
            (self.config.notices)(Notice::Detached {
                pods: names(&changes.detach),
            });
        }
        if !changes.host_attach.is_empty() || !changes.host_detach.is_empty() {
            let names = |d: &[crate::host::HostDevice]| d.iter().map(|d| d.name.clone()).collect();
            (self.config.notices)(Notice::HostDevices {
                attached: names(&changes.host_attach),
                detached: names(&changes.host_detach),
            });
        }
        if !changes.attach.is_empty() {
            (self.config.notices)(Notice::Attached {
                pods: names(&changes.attach),
                ms: changed_at.elapsed().as_secs_f64() * 1000.0,
            });
        }
        self.inv = new_inv;
        self.publish_modes();
        Ok(())
    }

    /// A reload asked on the socket: staged proposals and policies read
    /// again; the answer goes back to the asker, a failure keeps the maps.
    fn reload(&mut self, request: ReloadRequest) {
        let result = staged_now(&self.config)
            .and_then(|staged| {
                let entries = compile(&self.config, &staged, &self.inv, &self.fqdns)?;
                reprogram_policy(&mut self.dp, &self.inv, &entries)?;
                self.slot.replace(Arc::clone(&entries.compiled));
                Ok(format!(
                    "{} policy entries, {} staged namespaces",
                    entries.policy.len(),
                    staged.namespaces.len()
                ))
            })
            .map_err(|e| error_chain(&e));
        match &result {
            Ok(summary) => tracing::info!("reloaded: {summary}"),
            Err(e) => tracing::warn!("reload failed: {e}"),
        }
        let _ = request.reply.send(result);
    }

    fn publish_modes(&self) {
        self.hub
            .set_modes(modes_of(self.dp.tables(), &self.inv).into_iter().collect());
    }
}

pub(crate) fn write_line(out: &mut Box<dyn Write + Send>, text: &str) -> crate::Result<()> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .context("writing events")
}

fn modes_of(tables: &Tables, inv: &Inventory) -> Vec<(String, String)> {
    inv.namespaces
        .keys()
        .map(|ns| {
            let mode = tables
                .mode(ns_id(ns))
                .map_or_else(|e| format!("? ({e})"), |m| m.to_string());
            (ns.clone(), mode)
        })
        .collect()
}

pub(crate) fn staged_now(config: &AgentConfig) -> crate::Result<StagedSet> {
    match &config.staged {
        Some(source) => source
            .staged()
            .map_err(|source| crate::AgentError::Context {
                what: "reading the staged-enforce records".into(),
                source,
            }),
        None => Ok(StagedSet::default()),
    }
}

pub(crate) fn compile(
    config: &AgentConfig,
    staged: &StagedSet,
    inv: &Inventory,
    fqdns: &FqdnCache,
) -> crate::Result<policy::MapEntries> {
    policy::compile(
        config.policies.as_deref(),
        &staged.namespaces,
        inv,
        config.proxy_port,
        &config.visibility,
        &policy::DnsInput {
            port: config.dns_proxy_port,
            fqdns: fqdns.inputs(),
        },
    )
}

/// "what: why: because", as the socket's one-line answer.
pub(crate) fn error_chain(e: &crate::AgentError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
