//! One record per request the proxy saw, for the learner and the review.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use tokio::sync::mpsc;

use super::policy::Identity;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum L7Verdict {
    Allowed,
    /// Audit mode: forwarded, but enforce would have answered 403.
    WouldDeny,
    /// Enforce mode: answered 403, never forwarded.
    Denied,
    /// Not valid HTTP/1.x or ambiguous framing: 400 and close in enforce,
    /// passed through as opaque bytes in audit.
    Unparseable,
}

use cnpilot_bpf::maps::verdict;

impl L7Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => verdict::L7_ALLOWED_NAME,
            Self::WouldDeny => verdict::L7_WOULD_DENY_NAME,
            Self::Denied => verdict::L7_DENIED_NAME,
            Self::Unparseable => verdict::L7_UNPARSEABLE_NAME,
        }
    }
}

#[derive(Clone, Debug)]
pub struct L7Event {
    pub ts: SystemTime,
    pub src_ip: IpAddr,
    pub src_identity: Identity,
    pub dst_ip: IpAddr,
    pub dst_identity: Identity,
    pub dport: u16,
    /// Empty when the request could not be parsed.
    pub method: String,
    /// The normalized path the decision was made on (empty if unparseable).
    pub path: String,
    pub query: Option<String>,
    pub host: Option<String>,
    /// The upstream's status, 403/400 when the proxy answered, `None` when
    /// no status is known (connection lost, opaque pass-through).
    pub status: Option<u16>,
    pub verdict: L7Verdict,
    /// The rule that allowed it, the reason it was (or would be) denied, or
    /// why it could not be parsed.
    pub reason: String,
}

/// Counters that survive a full event channel.
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub denied: AtomicU64,
    pub unparseable: AtomicU64,
    /// Events lost because the consumer did not keep up (the proxy never
    /// waits for the learner: traffic must not stall on a slow disk).
    pub events_dropped: AtomicU64,
}

impl ProxyStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

pub(crate) fn emit(tx: &mpsc::Sender<L7Event>, stats: &ProxyStats, event: L7Event) {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    match event.verdict {
        L7Verdict::Denied => {
            stats.denied.fetch_add(1, Ordering::Relaxed);
        }
        L7Verdict::Unparseable => {
            stats.unparseable.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    if tx.try_send(event).is_err() {
        stats.events_dropped.fetch_add(1, Ordering::Relaxed);
    }
}
