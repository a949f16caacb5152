//! Security identities as Cilium assigns them: a workload's identity is its
//! namespace plus its labels, minus the labels that differ from pod to pod.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use cnpilot_bpf::maps::identity as reserved;
use serde::{Deserialize, Serialize};

/// The label Cilium adds to every pod identity with the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The label Cilium adds with the pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// Prefix of the labels Cilium copies from the pod's namespace.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// Labels that change from one pod of a workload to the next; Cilium leaves
/// them out of the identity so that every replica shares one identity.
pub const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "job-name",
];

/// Whether a pod label may appear in a policy selector: Cilium's default
/// label filter (`pkg/labelsfilter`) keeps `app.kubernetes.io/*` and drops
/// the per-pod labels, `io.kubernetes*`, `kubernetes.io*`, `*.k8s.io*`,
/// `*beta.kubernetes.io*` and annotations; the labels Cilium itself adds
/// (`io.kubernetes.pod.namespace`, `io.cilium.k8s.*`) describe the
/// namespace or service account, not the workload, so they are not
/// workload selectors either.
pub fn is_selector_label(key: &str) -> bool {
    if PER_POD_LABELS.contains(&key) {
        return false;
    }
    if key.starts_with("app.kubernetes.io/") {
        return true;
    }
    let (prefix, _) = key.rsplit_once('/').unwrap_or(("", key));
    !(key.starts_with("io.kubernetes")
        || key.starts_with("io.cilium.k8s")
        || key.starts_with("reserved:")
        || key.starts_with("cidr:")
        || key.starts_with("annotation")
        || prefix == "kubernetes.io"
        || prefix.ends_with(".kubernetes.io")
        || prefix == "k8s.io"
        || prefix.ends_with(".k8s.io"))
}

/// First identity number handed to a cluster workload (below are reserved).
pub const MIN_WORKLOAD_IDENTITY: u32 = 256;
/// Last identity number of the cluster-local range (Cilium's default without
/// cluster mesh).
pub const MAX_WORKLOAD_IDENTITY: u32 = 65535;
/// First CIDR (local) identity: Cilium's local-identity scope starts at 1<<24.
pub const MIN_CIDR_IDENTITY: u32 = (1 << 24) + 1;

/// A sorted label set. Keys of Kubernetes labels are stored bare
/// (`app`), reserved labels as `reserved:world` with an empty value.
///
/// Shared, copy-on-write: every flow record carries its peers' label sets,
/// and cloning one must cost a reference count, not a map (ingest clones
/// two per datapath event). The flow store also uses the shared allocation
/// as a cheap identity for interning.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(Arc<BTreeMap<String, String>>);

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Self(Arc::new(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        Arc::unwrap_or_clone(labels.0)
    }
}

impl Labels {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        Arc::make_mut(&mut self.0).insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The address of the shared map: equal for clones of one set (a
    /// cache key; two equal sets built separately differ).
    pub fn shared_id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// A single reserved label such as `reserved:world`.
    pub fn reserved(entity: &str) -> Self {
        let mut labels = Self::new();
        labels.insert(format!("reserved:{entity}"), "");
        labels
    }

    /// The labels that make up a pod's identity: its own labels without the
    /// per-pod ones, plus the namespace (and, when known, the service account
    /// and the namespace's labels, as Cilium adds them).
    pub fn identity_of_pod(
        pod_labels: &BTreeMap<String, String>,
        namespace: &str,
        service_account: Option<&str>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut labels = Self::new();
        for (key, value) in pod_labels {
            if !PER_POD_LABELS.contains(&key.as_str()) {
                labels.insert(key.clone(), value.clone());
            }
        }
        labels.insert(NAMESPACE_LABEL, namespace);
        if let Some(sa) = service_account.filter(|sa| !sa.is_empty()) {
            labels.insert(SERVICE_ACCOUNT_LABEL, sa);
        }
        for (key, value) in namespace_labels {
            labels.insert(format!("{NAMESPACE_LABELS_PREFIX}{key}"), value.clone());
        }
        labels
    }

    /// Canonical one-line form, `k=v;k2=v2` (`reserved:world` without `=`
    /// when the value is empty), used as the store column and as the hash
    /// input of the allocator. Kubernetes label keys and values cannot
    /// contain `;` or `=`, so the form is unambiguous.
    pub fn to_canonical(&self) -> String {
        let mut out = String::new();
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            out.push_str(key);
            if !value.is_empty() {
                out.push('=');
                out.push_str(value);
            }
        }
        out
    }

    /// Inverse of [`Labels::to_canonical`].
    pub fn from_canonical(text: &str) -> Self {
        let mut labels = Self::new();
        for item in text.split(';').filter(|item| !item.is_empty()) {
            match item.split_once('=') {
                Some((key, value)) => labels.insert(key, value),
                None => labels.insert(item, ""),
            }
        }
        labels
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_canonical())
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(Arc::new(iter.into_iter().collect()))
    }
}

/// The reserved identities, with Cilium's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservedIdentity {
    Host,
    World,
    Unmanaged,
    Health,
    Init,
    RemoteNode,
    KubeApiserver,
    Ingress,
}

impl ReservedIdentity {
    pub const ALL: [ReservedIdentity; 8] = [
        Self::Host,
        Self::World,
        Self::Unmanaged,
        Self::Health,
        Self::Init,
        Self::RemoteNode,
        Self::KubeApiserver,
        Self::Ingress,
    ];

    pub fn number(self) -> u32 {
        match self {
            Self::Host => reserved::HOST,
            Self::World => reserved::WORLD,
            Self::Unmanaged => reserved::UNMANAGED,
            Self::Health => reserved::HEALTH,
            Self::Init => reserved::INIT,
            Self::RemoteNode => reserved::REMOTE_NODE,
            Self::KubeApiserver => reserved::KUBE_APISERVER,
            Self::Ingress => reserved::INGRESS,
        }
    }

    /// Cilium's entity name (`reserved:<name>` label, `toEntities` value).
    pub fn name(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::World => "world",
            Self::Unmanaged => "unmanaged",
            Self::Health => "health",
            Self::Init => "init",
            Self::RemoteNode => "remote-node",
            Self::KubeApiserver => "kube-apiserver",
            Self::Ingress => "ingress",
        }
    }

    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.number() == number)
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    pub fn labels(self) -> Labels {
        Labels::reserved(self.name())
    }
}

/// Is this identity number one of the CIDR / local identities (≥ 2^24)?
pub fn is_cidr_identity(number: u32) -> bool {
    number >= MIN_CIDR_IDENTITY - 1
}

/// Hands out identity numbers for label sets, deterministically.
///
/// A label set's number is `MIN + fnv1a(canonical labels) % range`, probing
/// linearly past numbers taken by another set. Trade-off: without collisions
/// (the common case: range 65 280, a cluster has hundreds of identities) the
/// number depends only on the labels, so every agent and every run agrees
/// with no coordination; with a collision, the loser's number depends on
/// which set came first. [`IdentityAllocator::allocate_all`] allocates in
/// sorted order so a whole inventory gets the same numbers on every run.
#[derive(Debug, Clone, Default)]
pub struct IdentityAllocator {
    by_labels: HashMap<Labels, u32>,
    by_number: HashMap<u32, Labels>,
    cidrs: BTreeMap<String, u32>,
}

impl IdentityAllocator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allocate every set in sorted order (collision resolution then does not
    /// depend on the order the caller saw them in).
    pub fn allocate_all<'a>(&mut self, sets: impl IntoIterator<Item = &'a Labels>) {
        let mut sorted: Vec<&Labels> = sets.into_iter().collect();
        sorted.sort();
        sorted.dedup();
        for labels in sorted {
            self.allocate(labels);
        }
    }

    pub fn allocate(&mut self, labels: &Labels) -> u32 {
        if let Some(&number) = self.by_labels.get(labels) {
            return number;
        }
        let range = u64::from(MAX_WORKLOAD_IDENTITY - MIN_WORKLOAD_IDENTITY + 1);
        let start = fnv1a(labels.to_canonical().as_bytes()) % range;
        let mut offset = 0;
        let number = loop {
            // Range is 65 280 and a process never holds that many sets in
            // practice; the modulo makes probing wrap instead of running out.
            let candidate = MIN_WORKLOAD_IDENTITY + ((start + offset) % range) as u32;
            if !self.by_number.contains_key(&candidate) || offset >= range {
                break candidate;
            }
            offset += 1;
        };
        self.by_labels.insert(labels.clone(), number);
        self.by_number.insert(number, labels.clone());
        number
    }

    pub fn lookup(&self, labels: &Labels) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    pub fn labels_of(&self, number: u32) -> Option<Labels> {
        if let Some(r) = ReservedIdentity::from_number(number) {
            return Some(r.labels());
        }
        self.by_number.get(&number).cloned()
    }

    /// A CIDR identity for a prefix (e.g. `198.19.0.7/32`), numbered from
    /// 16777217 in order of first sight.
    pub fn cidr_identity(&mut self, cidr: &str) -> u32 {
        let next = MIN_CIDR_IDENTITY + self.cidrs.len() as u32;
        *self.cidrs.entry(cidr.to_string()).or_insert(next)
    }
}

/// The CIDR label Cilium gives an outside address: `cidr:198.19.0.7/32`.
pub fn cidr_labels(ip: IpAddr) -> Labels {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    let mut labels = Labels::reserved("world");
    labels.insert(format!("cidr:{ip}/{bits}"), "");
    labels
}

/// FNV-1a, 64 bit: stable across Rust versions and platforms, unlike
/// `DefaultHasher`.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn per_pod_labels_are_dropped_and_namespace_added() {
        let labels = Labels::identity_of_pod(
            &pod_labels(&[
                ("app", "api"),
                ("pod-template-hash", "5d8f7c"),
                ("job-name", "x"),
            ]),
            "payments",
            Some("api-sa"),
            &BTreeMap::new(),
        );
        assert_eq!(
            labels.to_canonical(),
            "app=api;io.cilium.k8s.policy.serviceaccount=api-sa;io.kubernetes.pod.namespace=payments"
        );
    }

    #[test]
    fn selector_labels_follow_ciliums_default_filter() {
        for key in [
            "app",
            "app.kubernetes.io/name",
            "tier",
            "k8s-app",
            "team.example.com/owner",
        ] {
            assert!(is_selector_label(key), "{key}");
        }
        for key in [
            "pod-template-hash",
            "statefulset.kubernetes.io/pod-name",
            "io.kubernetes.pod.namespace",
            "io.cilium.k8s.policy.serviceaccount",
            "kubernetes.io/hostname",
            "topology.kubernetes.io/zone",
            "node.k8s.io/pool",
            "reserved:world",
        ] {
            assert!(!is_selector_label(key), "{key}");
        }
    }

    #[test]
    fn replicas_share_one_identity() {
        let mut alloc = IdentityAllocator::new();
        let a = Labels::identity_of_pod(
            &pod_labels(&[("app", "api"), ("pod-template-hash", "aaa")]),
            "ns",
            None,
            &BTreeMap::new(),
        );
        let b = Labels::identity_of_pod(
            &pod_labels(&[("app", "api"), ("pod-template-hash", "bbb")]),
            "ns",
            None,
            &BTreeMap::new(),
        );
        assert_eq!(alloc.allocate(&a), alloc.allocate(&b));
    }

    #[test]
    fn numbers_are_stable_across_allocators_and_in_range() {
        let sets: Vec<Labels> = (0..2000)
            .map(|i| Labels::from_canonical(&format!("app=w{i};io.kubernetes.pod.namespace=n")))
            .collect();
        let mut first = IdentityAllocator::new();
        first.allocate_all(sets.iter());
        let mut second = IdentityAllocator::new();
        second.allocate_all(sets.iter().rev());
        let mut seen = std::collections::HashSet::new();
        for set in &sets {
            let n = first.lookup(set).unwrap();
            assert!((MIN_WORKLOAD_IDENTITY..=MAX_WORKLOAD_IDENTITY).contains(&n));
            assert_eq!(Some(n), second.lookup(set));
            assert!(seen.insert(n), "two sets got {n}");
        }
    }

    #[test]
    fn reserved_numbers_match_cilium() {
        assert_eq!(ReservedIdentity::Host.number(), 1);
        assert_eq!(ReservedIdentity::World.number(), 2);
        assert_eq!(ReservedIdentity::RemoteNode.number(), 6);
        assert_eq!(ReservedIdentity::Ingress.number(), 8);
        assert_eq!(
            ReservedIdentity::from_name("kube-apiserver").map(|r| r.number()),
            Some(7)
        );
    }

    #[test]
    fn cidr_identities_start_at_16777217() {
        let mut alloc = IdentityAllocator::new();
        assert_eq!(alloc.cidr_identity("198.19.0.7/32"), 16_777_217);
        assert_eq!(alloc.cidr_identity("198.19.0.8/32"), 16_777_218);
        assert_eq!(alloc.cidr_identity("198.19.0.7/32"), 16_777_217);
        assert!(is_cidr_identity(16_777_217));
        assert!(!is_cidr_identity(65535));
    }

    #[test]
    fn canonical_roundtrip() {
        let labels = Labels::from_canonical("app=x;reserved:world;tier=web");
        assert_eq!(labels.get("reserved:world"), Some(""));
        assert_eq!(Labels::from_canonical(&labels.to_canonical()), labels);
    }
}
