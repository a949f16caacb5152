//! The producer side of `cnpilot bench ingest`: `c/ringbench.bpf.c` on the
//! `sys_enter` raw tracepoint writes a datapath-layout flow event into a
//! ring buffer of the agent's size for every system call of one thread.

use aya::maps::{Array, MapData, RingBuf};
use aya::programs::RawTracePoint;
use aya::{include_bytes_aligned, Ebpf, EbpfLoader};

use crate::error::DatapathError;
use crate::maps::FlowEvent;

pub static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ringbench.bpf.o"));

const PROGRAM: &str = "cnp_ringbench";
const CONFIG: &str = "cnp_rb_config";
const PEERS: &str = "cnp_rb_peers";
const STATS: &str = "cnp_rb_stats";
const EVENTS: &str = "cnp_rb_events";
/// Entries of `cnp_rb_peers`.
pub const MAX_PEERS: usize = 256;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Config {
    tid: u32,
    peers: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Peer {
    addr: u32,
    identity: u32,
}

// SAFETY: plain #[repr(C)] integers, the layouts of ringbench.bpf.c.
unsafe impl aya::Pod for Config {}
unsafe impl aya::Pod for Peer {}

/// The loaded and attached producer (detached when dropped).
pub struct RingBench {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
}

fn map_error(map: &'static str) -> impl Fn(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { map, source }
}

fn missing(kind: &'static str, name: &'static str) -> DatapathError {
    DatapathError::Missing { kind, name }
}

impl RingBench {
    /// Load with a ring of `ring_bytes` (a power of two, a multiple of the
    /// page size), fill the peer table (address in host order, identity),
    /// attach.
    /// Nothing is emitted until [`RingBench::start`] names the thread.
    pub fn load(
        peers: &[(std::net::Ipv4Addr, u32)],
        ring_bytes: u32,
    ) -> Result<RingBench, DatapathError> {
        let mut ebpf = EbpfLoader::new()
            .set_max_entries(EVENTS, ring_bytes)
            .load(OBJECT)?;
        let used = peers.len().min(MAX_PEERS);
        {
            let map = ebpf.map_mut(PEERS).ok_or_else(|| missing("map", PEERS))?;
            let mut table: Array<_, Peer> = Array::try_from(map).map_err(map_error(PEERS))?;
            for (i, (addr, identity)) in peers.iter().take(used).enumerate() {
                let peer = Peer {
                    addr: u32::from(*addr).to_be(),
                    identity: *identity,
                };
                table.set(i as u32, peer, 0).map_err(map_error(PEERS))?;
            }
        }
        let mut bench = RingBench {
            ring: RingBuf::try_from(
                ebpf.take_map(EVENTS)
                    .ok_or_else(|| missing("map", EVENTS))?,
            )
            .map_err(map_error(EVENTS))?,
            ebpf,
        };
        bench.configure(0, used as u32)?;
        let program: &mut RawTracePoint = bench
            .ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| missing("program", PROGRAM))?
            .try_into()
            .map_err(|source| DatapathError::Program {
                program: PROGRAM,
                source,
            })?;
        program.load().map_err(|source| DatapathError::Program {
            program: PROGRAM,
            source,
        })?;
        program
            .attach("sys_enter")
            .map_err(|source| DatapathError::Program {
                program: PROGRAM,
                source,
            })?;
        Ok(bench)
    }

    fn configure(&mut self, tid: u32, peers: u32) -> Result<(), DatapathError> {
        let map = self
            .ebpf
            .map_mut(CONFIG)
            .ok_or_else(|| missing("map", CONFIG))?;
        let mut config: Array<_, Config> = Array::try_from(map).map_err(map_error(CONFIG))?;
        let peers = match config.get(&0, 0) {
            Ok(old) if peers == u32::MAX => old.peers,
            _ => peers,
        };
        config
            .set(0, Config { tid, peers }, 0)
            .map_err(map_error(CONFIG))
    }

    /// Emit one event per system call of thread `tid` (a `gettid()`).
    pub fn start(&mut self, tid: u32) -> Result<(), DatapathError> {
        self.configure(tid, u32::MAX)
    }

    /// Stop emitting.
    pub fn stop(&mut self) -> Result<(), DatapathError> {
        self.configure(0, u32::MAX)
    }

    /// (events attempted, reservations that failed because the ring was full)
    pub fn stats(&self) -> Result<(u64, u64), DatapathError> {
        let map = self.ebpf.map(STATS).ok_or_else(|| missing("map", STATS))?;
        let stats: Array<_, u64> = Array::try_from(map).map_err(map_error(STATS))?;
        let get = |i| stats.get(&i, 0).map_err(map_error(STATS));
        Ok((get(0)?, get(1)?))
    }

    /// Read up to `max` events that are in the ring now.
    pub fn drain_into(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(item) = self.ring.next() else { break };
            if let Some(ev) = FlowEvent::from_bytes(&item) {
                out.push(ev);
                n += 1;
            }
        }
        n
    }
}
