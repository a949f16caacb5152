//! The agent's local API: a Unix socket (root-only) that streams flow events
//! to `cnpilot observe` and `cnpilot enforce`, answers `status`, and reloads
//! policies when a staged enforce changes a namespace's proposal.
//!
//! A client writes one JSON request line: `{"op":"events"}` (then receives
//! event lines until it closes), `{"op":"status"}` or `{"op":"reload"}` (one
//! JSON answer line each). Each events client has a bounded queue: a client
//! that does not keep up loses events, counted and reported to it as
//! `{"type":"lost","count":N}` before its next line, and never slows the
//! agent.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Context;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// Lines a client may fall behind before it starts losing them.
const CLIENT_QUEUE: usize = 8192;

/// How far back `status` counts denials.
const STATUS_WINDOW: Duration = Duration::from_secs(60);

struct Client {
    tx: mpsc::Sender<Arc<str>>,
    lost: Arc<std::sync::atomic::AtomicU64>,
}

/// Denials of one kind in one namespace, by time.
#[derive(Default)]
struct Recent {
    at: VecDeque<(Instant, Denial)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    WouldDrop,
    Dropped,
    L7WouldDeny,
    L7Denied,
}

/// Per namespace, for `status`.
#[derive(Debug, Default, Serialize)]
pub struct NamespaceCounts {
    pub mode: String,
    pub would_drops: u64,
    pub drops: u64,
    pub l7_would_deny: u64,
    pub l7_denied: u64,
}

/// A reload the main loop performs (it owns the maps); the answer goes back
/// to the client that asked.
pub struct ReloadRequest {
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Shared between the event loop (which publishes) and the socket tasks.
pub struct Hub {
    clients: Mutex<Vec<Client>>,
    recent: Mutex<BTreeMap<String, Recent>>,
    modes: Mutex<BTreeMap<String, String>>,
}

impl Hub {
    pub fn has_clients(&self) -> bool {
        self.clients.lock().map(|c| !c.is_empty()).unwrap_or(false)
    }

    /// One serialized event line to every client; a full queue loses the
    /// line for that client only.
    pub fn publish(&self, line: &Arc<str>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        clients.retain(|c| match c.tx.try_send(Arc::clone(line)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                c.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    pub fn count(&self, namespace: &str, denial: Denial) {
        if let Ok(mut recent) = self.recent.lock() {
            let r = recent.entry(namespace.to_string()).or_default();
            let now = Instant::now();
            r.at.push_back((now, denial));
            while r
                .at
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > STATUS_WINDOW)
            {
                r.at.pop_front();
            }
        }
    }

    pub fn set_modes(&self, modes: BTreeMap<String, String>) {
        if let Ok(mut m) = self.modes.lock() {
            *m = modes;
        }
    }

    fn status(&self) -> BTreeMap<String, NamespaceCounts> {
        let mut out: BTreeMap<String, NamespaceCounts> = BTreeMap::new();
        if let Ok(modes) = self.modes.lock() {
            for (ns, mode) in modes.iter() {
                out.entry(ns.clone()).or_default().mode = mode.clone();
            }
        }
        let now = Instant::now();
        if let Ok(recent) = self.recent.lock() {
            for (ns, r) in recent.iter() {
                let c = out.entry(ns.clone()).or_default();
                for (t, d) in &r.at {
                    if now.duration_since(*t) > STATUS_WINDOW {
                        continue;
                    }
                    match d {
                        Denial::WouldDrop => c.would_drops += 1,
                        Denial::Dropped => c.drops += 1,
                        Denial::L7WouldDeny => c.l7_would_deny += 1,
                        Denial::L7Denied => c.l7_denied += 1,
                    }
                }
            }
        }
        out
    }
}

/// Binds the socket (replacing a stale one: a second agent is refused
/// earlier, by the pin directory's lock) and serves it on the current
/// runtime. Reload requests arrive on the returned channel.
pub fn serve(path: &Path) -> crate::Result<(Arc<Hub>, mpsc::Receiver<ReloadRequest>)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Flow events name every workload and address: root only.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    let hub = Arc::new(Hub {
        clients: Mutex::new(Vec::new()),
        recent: Mutex::new(BTreeMap::new()),
        modes: Mutex::new(BTreeMap::new()),
    });
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let accept_hub = Arc::clone(&hub);
    let owned: PathBuf = path.to_path_buf();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let hub = Arc::clone(&accept_hub);
                    let reload = reload_tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = client(stream, hub, reload).await {
                            tracing::debug!(error = %e, "agent socket client");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, socket = %owned.display(), "accepting");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok((hub, reload_rx))
}

async fn client(
    stream: UnixStream,
    hub: Arc<Hub>,
    reload: mpsc::Sender<ReloadRequest>,
) -> crate::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut request = String::new();
    let mut reader = BufReader::new(read);
    tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut request))
        .await
        .context("no request within 5 s")??;
    let op = serde_json::from_str::<serde_json::Value>(&request)
        .ok()
        .and_then(|v| v.get("op").and_then(|o| o.as_str()).map(str::to_string));
    match op.as_deref() {
        Some("events") => {
            let (tx, mut rx) = mpsc::channel::<Arc<str>>(CLIENT_QUEUE);
            let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
            if let Ok(mut clients) = hub.clients.lock() {
                clients.push(Client {
                    tx,
                    lost: Arc::clone(&lost),
                });
            }
            while let Some(line) = rx.recv().await {
                let n = lost.swap(0, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    write
                        .write_all(format!("{{\"type\":\"lost\",\"count\":{n}}}\n").as_bytes())
                        .await?;
                }
                write.write_all(line.as_bytes()).await?;
                write.write_all(b"\n").await?;
            }
        }
        Some("status") => {
            let body = serde_json::json!({ "namespaces": hub.status() });
            write.write_all(format!("{body}\n").as_bytes()).await?;
        }
        Some("reload") => {
            let (reply, answer) = oneshot::channel();
            reload
                .send(ReloadRequest { reply })
                .await
                .map_err(|_| crate::AgentError::invalid("the agent is stopping"))?;
            let body = match answer.await {
                Ok(Ok(summary)) => serde_json::json!({ "ok": true, "summary": summary }),
                Ok(Err(e)) => serde_json::json!({ "ok": false, "error": e }),
                Err(_) => serde_json::json!({ "ok": false, "error": "the agent is stopping" }),
            };
            write.write_all(format!("{body}\n").as_bytes()).await?;
        }
        _ => {
            let body = serde_json::json!({
                "ok": false,
                "error": "expected one request line: {\"op\":\"events\"}, {\"op\":\"status\"} or {\"op\":\"reload\"}"
            });
            write.write_all(format!("{body}\n").as_bytes()).await?;
        }
    }
    Ok(())
}
