//! Rust mirrors of the map layouts in `c/cnpilot.h`. Field order, widths and
//! padding must match the C side exactly; `tests` below check sizes and
//! offsets, so a change to one side that is not made on the other fails.

/// Identity numbers as Cilium assigns them to reserved entities.
pub mod identity {
    /// In a policy key: any peer.
    pub const ANY: u32 = 0;
    pub const HOST: u32 = 1;
    pub const WORLD: u32 = 2;
    pub const UNMANAGED: u32 = 3;
    pub const HEALTH: u32 = 4;
    pub const INIT: u32 = 5;
    pub const REMOTE_NODE: u32 = 6;
    pub const KUBE_APISERVER: u32 = 7;
    pub const INGRESS: u32 = 8;
}

/// Direction from the subject endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Direction {
    Ingress = 0,
    Egress = 1,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mode {
    Off = 0,
    Audit = 1,
    Enforce = 2,
}

pub mod action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
    pub const REDIRECT: u8 = 3;
    /// Allowed, and handed to the proxy only to record requests (HTTP
    /// visibility without L7 rules).
    pub const VISIBILITY: u8 = 4;
}

/// Verdicts: the datapath's codes, and the one spelling of every verdict
/// name the project writes or reads (event lines, flow records, `observe`),
/// the L7 proxy's included, so no layer can drift from another.
pub mod verdict {
    pub const FORWARDED: u8 = 0;
    pub const WOULD_DROP: u8 = 1;
    pub const DROPPED: u8 = 2;
    pub const REDIRECTED: u8 = 3;

    pub const FORWARDED_NAME: &str = "forwarded";
    pub const WOULD_DROP_NAME: &str = "would-drop";
    pub const DROPPED_NAME: &str = "dropped";
    pub const REDIRECTED_NAME: &str = "redirected";
    /// The proxy's: the request went on (an HTTP event's `forwarded`).
    pub const L7_ALLOWED_NAME: &str = "allowed";
    pub const L7_WOULD_DENY_NAME: &str = "l7-would-deny";
    pub const L7_DENIED_NAME: &str = "l7-denied";
    pub const L7_UNPARSEABLE_NAME: &str = "unparseable";

    /// The name of a datapath verdict code (`unknown` for a code this
    /// build does not know: a newer datapath).
    pub const fn name(code: u8) -> &'static str {
        match code {
            FORWARDED => FORWARDED_NAME,
            WOULD_DROP => WOULD_DROP_NAME,
            DROPPED => DROPPED_NAME,
            REDIRECTED => REDIRECTED_NAME,
            _ => "unknown",
        }
    }
}

pub mod reason {
    pub const NONE: u8 = 0;
    pub const DEFAULT_DENY: u8 = 1;
    pub const DENY_RULE: u8 = 2;
    /// L7 rules apply but the connection did not come through the proxy
    /// (no proxy listening): dropped in enforce, fail closed.
    pub const PROXY_BYPASSED: u8 = 3;
    /// The low bits of a reason: one of the codes above.
    pub const CODE_MASK: u8 = 0x3F;
    /// A host <-> local pod connection the host's policy denied and the
    /// pod's allowed: reason and rule are the host's (`hostpath.h`).
    pub const F_HOST: u8 = 0x80;
    /// A host <-> local pod connection the pod's policy denied (reason and
    /// rule are the pod's) and the host's policy too.
    pub const F_HOST_TOO: u8 = 0x40;

    /// The reason code without the host bits.
    pub const fn code(r: u8) -> u8 {
        r & CODE_MASK
    }

    /// The one spelling of a reason (events, flow records). The host's own
    /// denial of a host <-> local pod connection ([`F_HOST`]: the rule is
    /// the host's) is named as such; [`F_HOST_TOO`] leaves the pod's
    /// reason, which the rule is, as it is.
    pub const fn name(r: u8) -> &'static str {
        let host = r & F_HOST != 0;
        match (code(r), host) {
            (NONE, _) => "",
            (DEFAULT_DENY, false) => "default-deny",
            (DEFAULT_DENY, true) => "host-default-deny",
            (DENY_RULE, false) => "deny-rule",
            (DENY_RULE, true) => "host-deny-rule",
            (PROXY_BYPASSED, _) => "proxy-bypassed",
            _ => "unknown",
        }
    }
}

pub const IPCACHE_F_LOCAL_ENDPOINT: u32 = 1;
/// `EndpointValue::flags`: the node's own device (host firewall); see `cnpilot.h`.
pub const ENDPOINT_F_HOST: u32 = 1;
/// The reserved `cnp_endpoints` key of the host's entry for the host <->
/// local pod path (no interface has index 0); see `cnpilot.h`.
pub const ENDPOINT_HOST_KEY: u32 = 0;
pub const SUBJECT_F_DEFAULT_DENY: u32 = 1;

/// `skb->mark` values of the L7 redirect (see `cnpilot.h`).
pub mod mark {
    /// The nibble that says which kind of mark a packet carries.
    pub const MAGIC_MASK: u32 = 0x0F00;
    /// Set by `cnp_from_pod` on packets it assigned to the proxy's socket.
    pub const TO_PROXY: u32 = 0x0200;
    /// The proxy's upstream sockets (`SO_MARK`), with the client's identity.
    pub const FROM_PROXY: u32 = 0x0A00;
    /// The route table that delivers `TO_PROXY` packets locally (node netns).
    pub const PROXY_ROUTE_TABLE: u32 = 2004;

    /// The mark the proxy puts on an upstream connection for a client identity.
    pub fn from_proxy(identity: u32) -> u32 {
        ((identity & 0xFFFF) << 16) | FROM_PROXY | ((identity >> 16) & 0xFF)
    }

    /// The client identity a `FROM_PROXY` mark carries.
    pub fn identity_of(mark: u32) -> Option<u32> {
        (mark & MAGIC_MASK == FROM_PROXY).then_some(((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    /// Network byte order.
    pub addr: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct IpcacheValue {
    pub identity: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct EndpointKey {
    pub ifindex: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct EndpointValue {
    pub identity: u32,
    pub ns_id: u32,
    /// Network byte order.
    pub addr: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct NsModeValue {
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(C)]
pub struct SubjectKey {
    pub identity: u32,
    pub direction: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct SubjectValue {
    pub flags: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(C)]
pub struct PolicyKey {
    pub subject: u32,
    pub peer: u32,
    /// Host byte order; 0 = any port.
    pub dport: u16,
    /// IPPROTO_*; 0 = any protocol (only with `dport` 0).
    pub proto: u8,
    pub direction: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct PolicyValue {
    pub action: u8,
    pub pad: u8,
    pub proxy_port: u16,
    pub rule_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub pad: u16,
    pub ifindex: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FlowCounters {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub verdict: u8,
    pub reason: u8,
    /// The L7 proxy's port of a redirected flow: the entry is also the
    /// flow's conntrack (`c/cnpilot.h`).
    pub proxy_port: u16,
    pub rule_id: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub struct FlowEvent {
    pub ts_ns: u64,
    pub saddr: u32,
    pub daddr: u32,
    pub src_identity: u32,
    pub dst_identity: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    pub reason: u8,
    pub ifindex: u32,
    pub rule_id: u32,
    pub ns_id: u32,
    pub pad: u32,
}

impl Mode {
    pub fn from_u32(v: u32) -> Option<Mode> {
        match v {
            0 => Some(Mode::Off),
            1 => Some(Mode::Audit),
            2 => Some(Mode::Enforce),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "audit" => Ok(Mode::Audit),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!(
                "unknown mode `{other}`: expected off, audit or enforce"
            )),
        }
    }
}

// SAFETY: every type below is #[repr(C)], made only of integers, with every
// padding byte spelled out as a field (the layout test checks the C side has
// no hidden padding either), so any bit pattern is a valid value.
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheValue {}
unsafe impl aya::Pod for EndpointKey {}
unsafe impl aya::Pod for EndpointValue {}
unsafe impl aya::Pod for NsModeValue {}
unsafe impl aya::Pod for SubjectKey {}
unsafe impl aya::Pod for SubjectValue {}
unsafe impl aya::Pod for PolicyKey {}
unsafe impl aya::Pod for PolicyValue {}
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowCounters {}
unsafe impl aya::Pod for FlowEvent {}

impl FlowEvent {
    /// Decodes one ring buffer record; `None` if it is too short.
    pub fn from_bytes(bytes: &[u8]) -> Option<FlowEvent> {
        if bytes.len() < std::mem::size_of::<FlowEvent>() {
            return None;
        }
        // SAFETY: length checked above; FlowEvent is Pod and read unaligned.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    include!(concat!(env!("OUT_DIR"), "/c_layout.rs"));

    macro_rules! rust_layout {
        ($($c:literal => $t:ty { $($f:ident),* }),* $(,)?) => {
            vec![$(
                ($c, "", size_of::<$t>(), 0usize),
                $(($c, stringify!($f), offset_of!($t, $f), {
                    fn width<T>(_: impl Fn(&$t) -> &T) -> usize { size_of::<T>() }
                    width(|v: &$t| &v.$f)
                }),)*
            )*]
        };
    }

    #[test]
    fn rust_mirrors_match_the_c_header() {
        let rust: Vec<(&str, &str, usize, usize)> = rust_layout! {
            "ipcache_key" => IpcacheKey { prefixlen, addr },
            "ipcache_value" => IpcacheValue { identity, flags },
            "endpoint_key" => EndpointKey { ifindex },
            "endpoint_value" => EndpointValue { identity, ns_id, addr, flags },
            "ns_mode_value" => NsModeValue { mode },
            "subject_key" => SubjectKey { identity, direction },
            "subject_value" => SubjectValue { flags },
            "policy_key" => PolicyKey { subject, peer, dport, proto, direction },
            "policy_value" => PolicyValue { action, pad, proxy_port, rule_id },
            "flow_key" => FlowKey { saddr, daddr, sport, dport, proto, direction, pad, ifindex },
            "flow_counters" => FlowCounters { packets, bytes, first_seen_ns, last_seen_ns,
                src_identity, dst_identity, verdict, reason, proxy_port, rule_id },
            "flow_event" => FlowEvent { ts_ns, saddr, daddr, src_identity, dst_identity, sport,
                dport, proto, direction, verdict, reason, ifindex, rule_id, ns_id, pad },
        };
        let c: Vec<(&str, &str, usize, usize)> = C_LAYOUT.to_vec();
        assert_eq!(rust.len(), c.len(), "a field exists on one side only");
        for (r, c) in rust.iter().zip(c.iter()) {
            assert_eq!(
                r, c,
                "layout differs (type, field, offset, size): rust vs C"
            );
        }
    }

    #[test]
    fn c_structs_have_no_hidden_padding() {
        // Pod (any bit pattern valid, nothing uninitialised sent to the
        // kernel) needs every byte to be a named field.
        let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        for (t, f, off, size) in C_LAYOUT {
            let e = by_type.entry(t).or_default();
            if f.is_empty() {
                e.0 = *off; // the C program prints sizeof in the offset column
            } else {
                e.1 += size;
            }
        }
        for (t, (total, fields)) in by_type {
            assert_eq!(total, fields, "struct {t} has implicit padding");
        }
    }

    #[test]
    fn host_bits_name_the_host_side_and_keep_the_code() {
        assert_eq!(reason::name(reason::DEFAULT_DENY), "default-deny");
        assert_eq!(
            reason::name(reason::DEFAULT_DENY | reason::F_HOST),
            "host-default-deny"
        );
        assert_eq!(
            reason::name(reason::DENY_RULE | reason::F_HOST),
            "host-deny-rule"
        );
        assert_eq!(
            reason::name(reason::DENY_RULE | reason::F_HOST_TOO),
            "deny-rule"
        );
        assert_eq!(
            reason::code(reason::DEFAULT_DENY | reason::F_HOST),
            reason::DEFAULT_DENY
        );
        assert_eq!(reason::name(9), "unknown");
    }

    #[test]
    fn mode_round_trips_through_text_and_numbers() {
        for m in [Mode::Off, Mode::Audit, Mode::Enforce] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
            assert_eq!(Mode::from_u32(m as u32), Some(m));
        }
        assert!("drop".parse::<Mode>().is_err());
        assert_eq!(Mode::from_u32(7), None);
    }
}
