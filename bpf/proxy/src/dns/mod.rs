//! The DNS half of the L7 proxy: a transparent DNS proxy, as Cilium's.
//!
//! The tc program hands a pod's query to port 53 (when a `rules.dns` rule
//! or DNS visibility redirects it) to [`DnsProxy`]'s listener with
//! `bpf_sk_assign`. The proxy reads the question, asks its caller whether
//! the name may be asked ([`DnsPolicy`]): in enforce a denied query is
//! answered `REFUSED` and never forwarded. Otherwise it forwards the query
//! to the server the pod asked, from the node's address with the proxy's
//! mark (so the server's ingress policy sees the pod's identity), reads the
//! answer, hands what it resolved to the caller ([`LearnRequest`]) and
//! waits until the caller says the addresses are known to the datapath
//! before the pod gets the answer: the pod's first connection to an
//! answered address is then judged with that address's FQDN identity.
//! Every query becomes a [`DnsEvent`].
//!
//! Why a proxy and not parsing answers at tc: a denied query must be
//! answered `REFUSED`, which needs the query held and a reply built; and
//! the answer must be held until the ipcache knows its addresses, which a
//! tc program reading a packet in flight cannot do (the pod would connect
//! before user space had read the ring buffer, and be dropped).
//!
//! Queries come over UDP ([`DnsProxy::serve`]) and over TCP
//! ([`DnsProxy::serve_tcp`], RFC 1035 4.2.2 framing, several queries per
//! connection, answered in order), and are forwarded over the transport
//! they came on: a truncated UDP answer makes the pod retry over TCP, which
//! is checked the same way.
//!
//! Not handled: IPv6 clients, EDNS padding or DNSSEC (passed through
//! unread), pipelined TCP queries answered out of order (they are answered
//! one after the other).

mod serve;
pub mod tcp;
pub mod udp;
pub mod wire;

use std::net::{IpAddr, SocketAddrV4};
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use tokio::sync::oneshot;

pub use serve::{DnsProxy, DnsProxyConfig};

use crate::event::L7Verdict;
use crate::policy::{Identity, L7Decision};

/// Whether a pod may ask for a name (Cilium's `rules.dns`). A query that is
/// here only for visibility is allowed whatever its name.
pub trait DnsPolicy: Send + Sync + 'static {
    fn decide(
        &self,
        src_identity: Identity,
        dst_identity: Identity,
        proto: u8,
        dport: u16,
        qname: &str,
    ) -> L7Decision;

    /// Whether the answer to this query (names: the question's first, then
    /// its CNAME chain) has addresses the caller wants before the pod may
    /// see them. An answer nobody wants is released at once, without the
    /// round trip to the caller.
    fn learns(&self, query: &Query<'_>, names: &[String]) -> bool {
        let _ = (query, names);
        true
    }
}

/// Who asked what, for [`DnsPolicy::learns`].
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub src_identity: Identity,
    pub dst_identity: Identity,
    pub proto: u8,
    pub dport: u16,
    pub qname: &'a str,
}

/// What one answer resolved: every name of its CNAME chain (the question's
/// first) maps to `ips` for `ttl` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ttl: u32,
}

/// Sent to the caller for each answer with addresses; the answer is held
/// until `done` is answered (or dropped), at most
/// [`DnsProxyConfig::learn_timeout`].
#[derive(Debug)]
pub struct LearnRequest {
    pub learned: Learned,
    pub done: oneshot::Sender<()>,
}

/// One query the proxy saw, with its answer.
#[derive(Debug, Clone)]
pub struct DnsEvent {
    pub ts: SystemTime,
    pub src: SocketAddrV4,
    pub src_identity: Identity,
    /// The DNS server the pod asked.
    pub server: SocketAddrV4,
    pub dst_identity: Identity,
    /// 17 (UDP) or 6 (TCP): how the query came.
    pub proto: u8,
    /// Lower-case, no trailing dot; empty when the query could not be read.
    pub qname: String,
    pub qtype: u16,
    /// The server's rcode, `REFUSED` when the proxy answered, `None` when
    /// no answer came.
    pub rcode: Option<u8>,
    pub ips: Vec<IpAddr>,
    pub ttl: u32,
    pub verdict: L7Verdict,
    /// The rule that allowed it, or why it was (or would be) refused.
    pub reason: String,
}

/// Counters that survive a full event channel.
#[derive(Debug, Default)]
pub struct DnsStats {
    pub queries: AtomicU64,
    pub refused: AtomicU64,
    pub unanswered: AtomicU64,
    pub events_dropped: AtomicU64,
}

/// The name of a query type for records (`A`, `AAAA`, or the number).
pub fn qtype_name(qtype: u16) -> String {
    match qtype {
        wire::TYPE_A => "A".into(),
        wire::TYPE_AAAA => "AAAA".into(),
        wire::TYPE_CNAME => "CNAME".into(),
        12 => "PTR".into(),
        15 => "MX".into(),
        16 => "TXT".into(),
        33 => "SRV".into(),
        65 => "HTTPS".into(),
        other => other.to_string(),
    }
}

fn decision_verdict(decision: &L7Decision, enforce: bool) -> (L7Verdict, String) {
    match decision {
        L7Decision::Allow { rule } => (L7Verdict::Allowed, rule.clone()),
        L7Decision::Deny { reason } if enforce => (L7Verdict::Denied, reason.clone()),
        L7Decision::Deny { reason } => (L7Verdict::WouldDeny, reason.clone()),
    }
}
