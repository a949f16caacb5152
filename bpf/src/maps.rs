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
}

pub mod verdict {
    pub const FORWARDED: u8 = 0;
    pub const WOULD_DROP: u8 = 1;
    pub const DROPPED: u8 = 2;
    pub const REDIRECTED: u8 = 3;
}

pub mod reason {
    pub const NONE: u8 = 0;
    pub const DEFAULT_DENY: u8 = 1;
    pub const DENY_RULE: u8 = 2;
}

pub const IPCACHE_F_LOCAL_ENDPOINT: u32 = 1;
pub const SUBJECT_F_DEFAULT_DENY: u32 = 1;

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
pub struct CtValue {
    pub verdict: u8,
    pub reason: u8,
    pub proxy_port: u16,
    pub rule_id: u32,
    pub created_ns: u64,
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
    pub pad: u16,
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
