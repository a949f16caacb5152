//! Loading the object with its maps pinned by name, attaching to pods' veths
//! (tcx links, pinned so enforcement outlives the agent), and cleanup.

use std::path::{Path, PathBuf};
#[cfg(feature = "bench")]
use std::time::Duration;

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, SkLookup, TcAttachType};
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};

use crate::error::DatapathError;
use crate::events::EventReader;
use crate::tables::{names, Tables};

/// The compiled `c/cnpilot.bpf.c`.
pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cnpilot.bpf.o"));

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/cnpilot";

/// tc ingress on the host-side veth: the pod's egress.
pub const PROG_FROM_POD: &str = "cnp_from_pod";
/// tc egress on the host-side veth: the pod's ingress.
pub const PROG_TO_POD: &str = "cnp_to_pod";
/// `sk_lookup` in the node namespace: listener lookups for a local pod's
/// address (the time-wait reuse of a proxied tuple) find the L7 proxy.
pub const PROG_PROXY_LOOKUP: &str = "cnp_proxy_lookup";
/// The pinned link of [`PROG_PROXY_LOOKUP`], under `<pin>/links/`.
const PROXY_LOOKUP_LINK: &str = "netns-sk_lookup";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The loaded programs plus the (pinned, possibly pre-existing) maps.
pub struct Datapath {
    ebpf: Ebpf,
    tables: Tables,
    pin_dir: PathBuf,
}

impl Datapath {
    /// Loads the programs. Maps already pinned under `pin_dir` (by an earlier
    /// agent) are reused with their contents - conntrack, counters, policy,
    /// modes - otherwise they are created and pinned there.
    pub fn load_or_open(pin_dir: &Path) -> Result<Datapath, DatapathError> {
        Self::load_or_open_with(pin_dir, None)
    }

    /// [`Datapath::load_or_open`] with the event ring buffer sized to
    /// `ring_bytes` (a power of two, a multiple of the page size) instead of
    /// the object's 256 KiB. The size only applies when the ring is created:
    /// a pinned ring is reused as it is.
    pub fn load_or_open_with(
        pin_dir: &Path,
        ring_bytes: Option<u32>,
    ) -> Result<Datapath, DatapathError> {
        // An earlier build kept the verdicts in a map of their own, now in
        // cnp_flows: its pin would only hold ~25 MiB of kernel memory (the
        // map lives on while that build's programs are attached).
        remove_pin(pin_dir, names::CONNTRACK)?;
        Self::load(pin_dir, ring_bytes, |loader| loader.load(OBJECT))
    }

    /// Empties an earlier build's own conntrack map (`--compare-object`
    /// objects from before the verdicts moved into cnp_flows), if pinned.
    #[cfg(feature = "bench")]
    pub fn flush_legacy_conntrack(pin_dir: &Path) -> Result<(), DatapathError> {
        let path = pin_dir.join(names::CONNTRACK);
        if !path.exists() {
            return Ok(());
        }
        let map =
            aya::maps::MapData::from_pin(&path).map_err(DatapathError::map(names::CONNTRACK))?;
        // The old value is 16 bytes (verdict, reason, proxy port, rule id,
        // creation time); only keys are needed to empty it.
        let mut ct: aya::maps::HashMap<_, crate::maps::FlowKey, [u8; 16]> =
            aya::maps::Map::LruHashMap(map)
                .try_into()
                .map_err(DatapathError::map(names::CONNTRACK))?;
        let keys: Vec<crate::maps::FlowKey> = ct.keys().filter_map(Result::ok).collect();
        for k in keys {
            // A key gone meanwhile (evicted) is as good as removed.
            let _ = ct.remove(&k);
        }
        Ok(())
    }

    /// [`Datapath::load_or_open_with`] from another build of
    /// `c/cnpilot.bpf.c` (an object file of the same map layouts, e.g. from
    /// an earlier commit): `cnpilot bench datapath --compare-object` runs
    /// it beside this build's programs on the same pinned maps.
    #[cfg(feature = "bench")]
    pub fn load_object_file(
        pin_dir: &Path,
        ring_bytes: Option<u32>,
        object: &Path,
    ) -> Result<Datapath, DatapathError> {
        Self::load(pin_dir, ring_bytes, |loader| loader.load_file(object))
    }

    fn load(
        pin_dir: &Path,
        ring_bytes: Option<u32>,
        load: impl FnOnce(&mut EbpfLoader) -> Result<Ebpf, aya::EbpfError>,
    ) -> Result<Datapath, DatapathError> {
        ensure_bpffs(pin_dir)?;
        std::fs::create_dir_all(pin_dir.join("links"))
            .map_err(DatapathError::io("creating", pin_dir))?;
        let mut loader = EbpfLoader::new();
        loader.map_pin_path(pin_dir);
        if let Some(bytes) = ring_bytes {
            loader.set_max_entries(names::EVENTS, bytes);
        }
        let mut ebpf = load(&mut loader)?;
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program {
                    program: name,
                    source,
                })?;
        }
        sk_lookup(&mut ebpf)?
            .load()
            .map_err(|source| DatapathError::Program {
                program: PROG_PROXY_LOOKUP,
                source,
            })?;
        let tables = Tables::take(&mut ebpf)?;
        Ok(Datapath {
            ebpf,
            tables,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    pub fn tables_mut(&mut self) -> &mut Tables {
        &mut self.tables
    }

    /// Attaches both programs to `ifname` (a pod's host-side veth) in the
    /// network namespace `netns` (`None`: the caller's). Links are pinned as
    /// `<pin>/links/<ifname>-{ingress,egress}`; a link already pinned there
    /// (left by an earlier agent) is updated in place to this agent's
    /// program, so the interface is never without one.
    pub fn attach(&mut self, netns: Option<&Path>, ifname: &str) -> Result<(), DatapathError> {
        self.attach_pair(
            netns,
            ifname,
            [
                (PROG_FROM_POD, TcAttachType::Ingress, "ingress"),
                (PROG_TO_POD, TcAttachType::Egress, "egress"),
            ],
        )
    }

    /// Attaches the programs to one of the node's own devices (the host
    /// firewall): the other way round from a pod's veth, since a packet
    /// arriving on the device is the host's ingress. Its endpoint entry
    /// carries `ENDPOINT_F_HOST` and the node's address. Pinned and
    /// detached like a pod's interface.
    pub fn attach_host(&mut self, netns: Option<&Path>, ifname: &str) -> Result<(), DatapathError> {
        self.attach_pair(
            netns,
            ifname,
            [
                (PROG_TO_POD, TcAttachType::Ingress, "ingress"),
                (PROG_FROM_POD, TcAttachType::Egress, "egress"),
            ],
        )
    }

    fn attach_pair(
        &mut self,
        netns: Option<&Path>,
        ifname: &str,
        pair: [(&'static str, TcAttachType, &'static str); 2],
    ) -> Result<(), DatapathError> {
        for (program, attach_type, suffix) in pair {
            let pin = link_pin(&self.pin_dir, ifname, suffix);
            let prog = classifier(&mut self.ebpf, program)?;
            if pin.exists() {
                match replace_pinned(prog, &pin) {
                    Ok(()) => continue,
                    Err(e) => {
                        // A stale pin (interface gone and recreated): start over.
                        tracing::warn!(pin = %pin.display(), error = %e, "re-creating pinned link");
                        std::fs::remove_file(&pin).map_err(DatapathError::io("removing", &pin))?;
                    }
                }
            }
            let attach = |prog: &mut SchedClassifier| {
                prog.attach_with_options(
                    ifname,
                    attach_type,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
            };
            let link_id = match netns {
                Some(ns) => crate::netns::run_in(ns, || attach(prog)).map_err(|source| {
                    DatapathError::Netns {
                        path: ns.to_path_buf(),
                        source,
                    }
                })?,
                None => attach(prog),
            }
            .map_err(|source| DatapathError::Program { program, source })?;
            let link = prog
                .take_link(link_id)
                .map_err(|source| DatapathError::Program { program, source })?;
            let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Link {
                path: pin.clone(),
                detail: format!("not a tcx link: {e}"),
            })?;
            fd_link.pin(&pin).map_err(|e| DatapathError::Link {
                path: pin.clone(),
                detail: e.to_string(),
            })?;
            tracing::debug!(ifname, program, "attached");
        }
        Ok(())
    }

    /// Attaches the `sk_lookup` program to the network namespace `netns`
    /// (the node's, where the proxy listens), pinned as
    /// `<pin>/links/netns-sk_lookup`. A link left by an earlier agent is
    /// replaced after the new one is attached (both may run for a moment;
    /// they answer alike).
    pub fn attach_proxy_lookup(&mut self, netns: &Path) -> Result<(), DatapathError> {
        let program = PROG_PROXY_LOOKUP;
        let pin = self.pin_dir.join("links").join(PROXY_LOOKUP_LINK);
        let ns = std::fs::File::open(netns).map_err(DatapathError::io("opening", netns))?;
        let prog = sk_lookup(&mut self.ebpf)?;
        let id = prog
            .attach(&ns)
            .map_err(|source| DatapathError::Program { program, source })?;
        let link = prog
            .take_link(id)
            .map_err(|source| DatapathError::Program { program, source })?;
        let fd_link = FdLink::from(link);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io("removing", &pin)(e)),
        }
        fd_link.pin(&pin).map_err(|e| DatapathError::Link {
            path: pin.clone(),
            detail: e.to_string(),
        })?;
        Ok(())
    }

    /// Per tc program, the kernel's run count and total run time (both 0
    /// unless `kernel.bpf_stats_enabled` is 1): what a benchmark divides to
    /// get the cost of one run.
    #[cfg(feature = "bench")]
    pub fn run_stats(&mut self) -> Result<Vec<(&'static str, u64, Duration)>, DatapathError> {
        let mut out = Vec::new();
        for name in [PROG_FROM_POD, PROG_TO_POD] {
            let info = classifier(&mut self.ebpf, name)?.info().map_err(|source| {
                DatapathError::Program {
                    program: name,
                    source,
                }
            })?;
            out.push((name, info.run_count(), info.run_time()));
        }
        Ok(out)
    }

    /// Takes the ring buffer reader (once; needs a tokio runtime).
    pub fn events(&mut self) -> Result<EventReader, DatapathError> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(DatapathError::Missing {
                kind: "map",
                name: names::EVENTS,
            })?;
        EventReader::new(map)
    }
}

/// Detaches cnpilot from one interface (removes its pinned links).
pub fn detach(pin_dir: &Path, ifname: &str) -> Result<(), DatapathError> {
    for suffix in ["ingress", "egress"] {
        let pin = link_pin(pin_dir, ifname, suffix);
        match std::fs::remove_file(&pin) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DatapathError::io("removing", pin)(e)),
        }
    }
    Ok(())
}

/// Detaches cnpilot from every interface: the programs stop running once the
/// last pinned link is gone (nothing else holds them).
pub fn detach_all(pin_dir: &Path) -> Result<(), DatapathError> {
    let links = pin_dir.join("links");
    let entries = match std::fs::read_dir(&links) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DatapathError::io("reading", links)(e)),
    };
    for entry in entries {
        let path = entry.map_err(DatapathError::io("reading", &links))?.path();
        std::fs::remove_file(&path).map_err(DatapathError::io("removing", path))?;
    }
    Ok(())
}

/// Removes `pin_dir/name` if it is there.
fn remove_pin(pin_dir: &Path, name: &str) -> Result<(), DatapathError> {
    let path = pin_dir.join(name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DatapathError::io("removing", path)(e)),
    }
}

/// Removes everything cnpilot pinned under `pin_dir` (links, then maps, then
/// the directory). Idempotent: a missing directory is success.
pub fn unpin_all(pin_dir: &Path) -> Result<(), DatapathError> {
    if !pin_dir.exists() {
        return Ok(());
    }
    detach_all(pin_dir)?;
    let _ = std::fs::remove_dir(pin_dir.join("links"));
    for name in names::ALL {
        remove_pin(pin_dir, name)?;
    }
    std::fs::remove_dir(pin_dir).map_err(DatapathError::io("removing", pin_dir))
}

/// Interfaces with a pinned link (what a restarted agent inherits).
pub fn attached_interfaces(pin_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(pin_dir.join("links"))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix("-ingress").map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Names of the tcx programs on `ifname` in `netns` (`None`: the caller's),
/// as (`"ingress"|"egress"`, program name), in run order.
pub fn tcx_programs(
    netns: Option<&Path>,
    ifname: &str,
) -> Result<Vec<(&'static str, String)>, DatapathError> {
    let query = || -> Result<Vec<(&'static str, String)>, aya::programs::ProgramError> {
        let mut out = Vec::new();
        for (t, label) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let (_, progs) = SchedClassifier::query_tcx(ifname, t)?;
            out.extend(
                progs
                    .iter()
                    .map(|p| (label, p.name_as_str().unwrap_or("?").to_string())),
            );
        }
        Ok(out)
    };
    let result = match netns {
        Some(ns) => crate::netns::run_in(ns, query).map_err(|source| DatapathError::Netns {
            path: ns.to_path_buf(),
            source,
        })?,
        None => query(),
    };
    result.map_err(|source| DatapathError::Program {
        program: "tcx query",
        source,
    })
}

/// Puts the L7 proxy's listening socket where `sk_lookup` finds it (the
/// pinned `cnp_proxy_socks`). The kernel removes it when the socket closes.
pub fn register_proxy_listener(
    pin_dir: &Path,
    listener: &impl std::os::fd::AsRawFd,
) -> Result<(), DatapathError> {
    let path = pin_dir.join(names::PROXY_SOCKS);
    let data =
        aya::maps::MapData::from_pin(&path).map_err(DatapathError::map(names::PROXY_SOCKS))?;
    let mut map = aya::maps::SockMap::try_from(aya::maps::Map::SockMap(data))
        .map_err(DatapathError::map(names::PROXY_SOCKS))?;
    map.set(0, listener, 0)
        .map_err(DatapathError::map(names::PROXY_SOCKS))
}

fn link_pin(pin_dir: &Path, ifname: &str, suffix: &str) -> PathBuf {
    pin_dir.join("links").join(format!("{ifname}-{suffix}"))
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}

fn sk_lookup(ebpf: &mut Ebpf) -> Result<&mut SkLookup, DatapathError> {
    let name = PROG_PROXY_LOOKUP;
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing {
            kind: "program",
            name,
        })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            program: name,
            source,
        })
}

/// Swaps the program behind an existing pinned tcx link (bpf_link_update:
/// atomic, the interface is never without a program).
fn replace_pinned(prog: &mut SchedClassifier, pin: &Path) -> Result<(), String> {
    let pinned = PinnedLink::from_pin(pin).map_err(|e| e.to_string())?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| e.to_string())?;
    let id = prog.attach_to_link(link).map_err(|e| e.to_string())?;
    // The pin keeps the link; drop our handle without detaching anything.
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    drop(link);
    Ok(())
}

/// `pin_dir` must be on a bpffs. If it is under an unmounted /sys/fs/bpf,
/// mount it there (it is not mounted at boot on every machine).
fn ensure_bpffs(pin_dir: &Path) -> Result<(), DatapathError> {
    let root = Path::new("/sys/fs/bpf");
    if is_bpffs(pin_dir.parent().unwrap_or(pin_dir)) || is_bpffs(pin_dir) {
        return Ok(());
    }
    if pin_dir.starts_with(root) && !is_bpffs(root) {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
            .status()
            .map_err(DatapathError::io("running mount for", root))?;
        if status.success() && is_bpffs(root) {
            tracing::info!("mounted bpffs on /sys/fs/bpf");
            return Ok(());
        }
    }
    Err(DatapathError::BpffsNotMounted {
        path: pin_dir.to_path_buf(),
    })
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}
