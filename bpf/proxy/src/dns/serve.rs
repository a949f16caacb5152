//! The proxy's UDP loop (one task per query) and the decision every query
//! gets, whichever transport brought it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

use super::udp::{bind_transparent_udp, recv_with_orig_dst};
use super::wire::{self, RCODE_REFUSED};
use super::{decision_verdict, DnsEvent, DnsPolicy, DnsStats, LearnRequest, Learned};
use crate::conn::upstream_mark;
use crate::event::L7Verdict;
use crate::listener::ProxyError;
use crate::policy::{IdentityResolver, L7Decision, L7Mode, ModeResolver};

/// How a query reached the proxy, and so how it is forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn proto(self) -> u8 {
        match self {
            Transport::Udp => 17,
            Transport::Tcp => 6,
        }
    }
}

/// A DNS message over UDP without EDNS is at most 512 bytes; with EDNS a
/// server may send up to what the client advertised. 4096 is the common
/// advertised size (and what Cilium's proxy reads).
const MAX_MESSAGE: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct DnsProxyConfig {
    /// How long the proxy waits for the server's answer (the pod's
    /// resolver retries on its own).
    pub upstream_timeout: Duration,
    /// How long an answer is held for its addresses to reach the datapath.
    pub learn_timeout: Duration,
    /// Set `SO_MARK` = the pod's identity on the forwarded query.
    pub mark_upstream: bool,
}

impl Default for DnsProxyConfig {
    fn default() -> Self {
        Self {
            upstream_timeout: Duration::from_secs(5),
            learn_timeout: Duration::from_millis(500),
            mark_upstream: true,
        }
    }
}

pub struct DnsProxy {
    config: DnsProxyConfig,
    identities: Arc<dyn IdentityResolver>,
    policy: Arc<dyn DnsPolicy>,
    modes: Arc<dyn ModeResolver>,
    events: mpsc::Sender<DnsEvent>,
    learn: Option<mpsc::Sender<LearnRequest>>,
    stats: Arc<DnsStats>,
    /// One socket per server address, bound to it, to answer pods from.
    repliers: Mutex<HashMap<SocketAddrV4, Arc<UdpSocket>>>,
}

impl DnsProxy {
    pub fn new(
        config: DnsProxyConfig,
        identities: Arc<dyn IdentityResolver>,
        policy: Arc<dyn DnsPolicy>,
        modes: Arc<dyn ModeResolver>,
        events: mpsc::Sender<DnsEvent>,
        learn: Option<mpsc::Sender<LearnRequest>>,
    ) -> Self {
        Self {
            config,
            identities,
            policy,
            modes,
            events,
            learn,
            stats: Arc::new(DnsStats::default()),
            repliers: Mutex::new(HashMap::new()),
        }
    }

    pub fn stats(&self) -> Arc<DnsStats> {
        Arc::clone(&self.stats)
    }

    /// Serves `listener` (from [`super::udp::bind_transparent_udp`] with
    /// `orig_dst`) until the future is dropped. Must run on a runtime whose
    /// threads are in the node's network namespace.
    pub async fn serve(self: Arc<Self>, listener: std::net::UdpSocket) -> Result<(), ProxyError> {
        let own_port = listener.local_addr().map_err(ProxyError::Accept)?.port();
        let listener = UdpSocket::from_std(listener).map_err(ProxyError::Accept)?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let got = match recv_with_orig_dst(&listener, &mut buf).await {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS proxy receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A datagram addressed to the proxy itself was not redirected:
            // forwarding it would loop.
            let Some(server) = got.orig_dst.filter(|d| d.port() != own_port) else {
                continue;
            };
            let query = buf[..got.len].to_vec();
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.handle(query, got.from, server).await });
        }
    }

    async fn handle(&self, query: Vec<u8>, client: SocketAddrV4, server: SocketAddrV4) {
        if let Some(reply) = self.answer(&query, client, server, Transport::Udp).await {
            self.reply(server, client, &reply).await;
        }
    }

    /// Decides one query from `client` to `server` and returns what the
    /// pod gets: the server's answer, `REFUSED` (a name `rules.dns` denies,
    /// in enforce), `FORMERR` (unreadable, in enforce), or nothing (no
    /// answer came). Records it as one [`DnsEvent`].
    pub(super) async fn answer(
        &self,
        query: &[u8],
        client: SocketAddrV4,
        server: SocketAddrV4,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.stats.queries.fetch_add(1, Ordering::Relaxed);
        let src_identity = self.identities.identity_of(IpAddr::V4(*client.ip()));
        let dst_identity = self.identities.identity_of(IpAddr::V4(*server.ip()));
        let mut event = DnsEvent {
            ts: SystemTime::now(),
            src: client,
            src_identity,
            server,
            dst_identity,
            proto: transport.proto(),
            qname: String::new(),
            qtype: 0,
            rcode: None,
            ips: Vec::new(),
            ttl: 0,
            verdict: L7Verdict::Allowed,
            reason: String::new(),
        };
        let enforce =
            self.modes.mode_for(IpAddr::V4(*client.ip()), src_identity) == L7Mode::Enforce;
        match wire::parse(query) {
            Ok(msg) if !msg.is_response() && msg.question.is_some() => {
                if let Some(q) = msg.question {
                    event.qname = q.name;
                    event.qtype = q.qtype;
                }
                let decision = self.policy.decide(
                    src_identity,
                    dst_identity,
                    transport.proto(),
                    server.port(),
                    &event.qname,
                );
                (event.verdict, event.reason) = decision_verdict(&decision, enforce);
                if enforce && matches!(decision, L7Decision::Deny { .. }) {
                    self.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let reply = wire::error_reply(query, RCODE_REFUSED);
                    if reply.is_some() {
                        event.rcode = Some(RCODE_REFUSED);
                    }
                    self.emit(event);
                    return reply;
                }
            }
            parsed => {
                // Not a query we can read: a server would answer FORMERR or
                // nothing; in enforce the name cannot be checked, so it is
                // not forwarded (fail closed), in audit it passes unread.
                event.verdict = L7Verdict::Unparseable;
                event.reason = match parsed {
                    Err(e) => e.to_string(),
                    Ok(_) => "not a query with a question".into(),
                };
                if enforce {
                    let reply = wire::error_reply(query, wire::RCODE_FORMERR);
                    if reply.is_some() {
                        event.rcode = Some(wire::RCODE_FORMERR);
                    }
                    self.emit(event);
                    return reply;
                }
            }
        }
        let forwarded = match transport {
            Transport::Udp => self.forward(query, server, src_identity).await,
            Transport::Tcp => {
                super::tcp::forward(
                    query,
                    server,
                    self.config
                        .mark_upstream
                        .then(|| upstream_mark(src_identity)),
                    self.config.upstream_timeout,
                )
                .await
            }
        };
        let answer = match forwarded {
            Ok(answer) => answer,
            Err(e) => {
                self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%server, error = %e, "DNS upstream failed");
                event.reason = if event.reason.is_empty() {
                    format!("no answer: {e}")
                } else {
                    format!("{} (no answer: {e})", event.reason)
                };
                self.emit(event);
                return None;
            }
        };
        if let Ok(msg) = wire::parse(&answer) {
            event.rcode = Some(msg.rcode());
            let resolved = msg.resolved();
            if !resolved.ips.is_empty() && msg.rcode() == 0 {
                event.ips.clone_from(&resolved.ips);
                event.ttl = resolved.ttl;
                let query = super::Query {
                    src_identity,
                    dst_identity,
                    proto: transport.proto(),
                    dport: server.port(),
                    qname: &event.qname,
                };
                if self.policy.learns(&query, &resolved.names) {
                    self.learn(Learned {
                        names: resolved.names,
                        ips: resolved.ips,
                        ttl: resolved.ttl,
                    })
                    .await;
                }
            }
        }
        self.emit(event);
        Some(answer)
    }

    /// Hands the addresses to the caller and waits (bounded) until they
    /// are in the datapath.
    async fn learn(&self, learned: Learned) {
        let Some(tx) = &self.learn else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if tx.send(LearnRequest { learned, done }).await.is_err() {
            return;
        }
        if timeout(self.config.learn_timeout, wait).await.is_err() {
            tracing::warn!(
                "DNS answer released before its addresses reached the datapath ({:?})",
                self.config.learn_timeout
            );
        }
    }

    async fn forward(
        &self,
        query: &[u8],
        server: SocketAddrV4,
        src_identity: u32,
    ) -> std::io::Result<Vec<u8>> {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if self.config.mark_upstream {
            socket.set_mark(upstream_mark(src_identity))?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        socket.connect(SocketAddr::V4(server)).await?;
        socket.send(query).await?;
        let id = query.get(0..2).map(|b| [b[0], b[1]]);
        let mut buf = vec![0u8; MAX_MESSAGE];
        let deadline = tokio::time::Instant::now() + self.config.upstream_timeout;
        loop {
            let n = tokio::time::timeout_at(deadline, socket.recv(&mut buf))
                .await
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))??;
            // Only the answer to this query (a stray datagram is not it).
            if n >= 2 && id == Some([buf[0], buf[1]]) {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }

    /// Sends `msg` to the pod from `server`'s address and port.
    async fn reply(&self, server: SocketAddrV4, client: SocketAddrV4, msg: &[u8]) {
        let socket = match self.replier(server) {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(%server, error = %e, "cannot answer as the DNS server");
                return;
            }
        };
        if let Err(e) = socket.send_to(msg, SocketAddr::V4(client)).await {
            tracing::debug!(%client, error = %e, "DNS reply to the pod failed");
        }
    }

    fn replier(&self, server: SocketAddrV4) -> std::io::Result<Arc<UdpSocket>> {
        let mut repliers = match self.repliers.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(s) = repliers.get(&server) {
            return Ok(Arc::clone(s));
        }
        let socket = Arc::new(UdpSocket::from_std(bind_transparent_udp(
            SocketAddr::V4(server),
            false,
        )?)?);
        repliers.insert(server, Arc::clone(&socket));
        Ok(socket)
    }

    fn emit(&self, event: DnsEvent) {
        if self.events.try_send(event).is_err() {
            self.stats.events_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}
