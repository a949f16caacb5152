//! Accepting connections. Transparent mode: the listener has
//! `IP_TRANSPARENT` in the node namespace, the datapath (sk_assign or an nft
//! `tproxy` rule on a mark) delivers connections addressed to pods to it,
//! and `getsockname()` of an accepted socket is the original destination,
//! the only place a request is ever forwarded to. Explicit mode (tests,
//! bench baselines): a fixed upstream. Both share every line after accept.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::conn::{upstream_mark, ConnInfo, Connection, Shared};
use super::event::{L7Event, ProxyStats};
use super::policy::{IdentityResolver, L7Policy, ModeResolver};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("binding the L7 proxy listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting on the L7 proxy listener: {0}")]
    Accept(#[source] std::io::Error),
    #[error("L7 lab setup: {0}")]
    Setup(String),
}

#[derive(Clone, Copy, Debug)]
pub enum Forwarding {
    /// Forward to the accepted socket's local address (transparent mode).
    OriginalDestination,
    /// Forward to a fixed address (explicit mode).
    Fixed(SocketAddr),
}

#[derive(Clone, Copy, Debug)]
pub struct ProxyConfig {
    pub forwarding: Forwarding,
    /// Set `SO_MARK` = [`upstream_mark`] of the client's identity upstream.
    pub mark_upstream: bool,
    /// Longest wait for a complete request head (also the keep-alive idle limit).
    pub head_timeout: Duration,
    pub connect_timeout: Duration,
}

impl ProxyConfig {
    pub fn transparent() -> Self {
        Self {
            forwarding: Forwarding::OriginalDestination,
            mark_upstream: true,
            head_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
        }
    }

    pub fn explicit(upstream: SocketAddr) -> Self {
        Self {
            forwarding: Forwarding::Fixed(upstream),
            mark_upstream: false,
            ..Self::transparent()
        }
    }
}

/// The proxy: policy, identities and modes are the caller's; events go to
/// `events` (never awaited: a full channel drops and counts).
pub struct L7Proxy {
    shared: Arc<Shared>,
    config: ProxyConfig,
}

impl L7Proxy {
    pub fn new(
        config: ProxyConfig,
        identities: Arc<dyn IdentityResolver>,
        policy: Arc<dyn L7Policy>,
        modes: Arc<dyn ModeResolver>,
        events: mpsc::Sender<L7Event>,
    ) -> Self {
        let shared = Arc::new(Shared {
            identities,
            policy,
            modes,
            events,
            stats: Arc::new(ProxyStats::default()),
            head_timeout: config.head_timeout,
            connect_timeout: config.connect_timeout,
        });
        Self { shared, config }
    }

    pub fn stats(&self) -> Arc<ProxyStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Serves until the future is dropped (abort its task to stop). The
    /// runtime running this must live in the namespace the upstream
    /// connections leave from (the node's): sockets are created in the
    /// network namespace of the thread that creates them.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), ProxyError> {
        let own = listener.local_addr().map_err(ProxyError::Accept)?;
        loop {
            let (client, src) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of fds or a connection reset before accept: keep serving.
                Err(e) => {
                    tracing::warn!(error = %e, "L7 proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(local) = client.local_addr() else {
                continue;
            };
            let (dst, upstream) = match self.config.forwarding {
                Forwarding::OriginalDestination => (local, local),
                Forwarding::Fixed(up) => (up, up),
            };
            // A connection made to the proxy's own port was not redirected
            // to it: forwarding it would loop back into the proxy.
            if dst.port() == own.port() {
                tracing::debug!(%src, %dst, "refusing a connection addressed to the proxy itself");
                continue;
            }
            self.shared
                .stats
                .connections
                .fetch_add(1, Ordering::Relaxed);
            let src_identity = self.shared.identities.identity_of(src.ip());
            let info = ConnInfo {
                src,
                dst,
                upstream,
                src_identity,
                dst_identity: self.shared.identities.identity_of(dst.ip()),
                mark: self
                    .config
                    .mark_upstream
                    .then(|| upstream_mark(src_identity)),
            };
            tokio::spawn(Connection::new(client, info, Arc::clone(&self.shared)).run());
        }
    }
}

/// A listener for transparently redirected connections (`IP_TRANSPARENT`,
/// needs CAP_NET_ADMIN), in the calling thread's network namespace.
pub fn bind_transparent(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let bind_err = |source| ProxyError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true).map_err(bind_err)?;
    } else {
        socket.set_ip_transparent_v6(true).map_err(bind_err)?;
    }
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    Ok(socket.into())
}

/// A plain listener (explicit mode).
pub fn bind_explicit(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ProxyError::Bind { addr, source })?;
    Ok(listener)
}
