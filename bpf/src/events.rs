//! The ring buffer of flow events, read asynchronously.

use std::time::Duration;

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::error::DatapathError;
use crate::maps::FlowEvent;
use crate::tables::names;

/// How long after a read that found events the reader looks again without
/// being woken. The programs wake the reader at most once per 4 ms
/// (`CNP_WAKEUP_NS` in `c/cnpilot.bpf.c`) unless 32 KiB wait unread, so
/// the events of a burst's last 4 ms are only found by this second look:
/// it must not be shorter than that interval.
const FOLLOW_UP: Duration = Duration::from_millis(5);

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
    /// The last read found events: the next wait ends after [`FOLLOW_UP`]
    /// even without a wakeup.
    follow_up: bool,
}

impl EventReader {
    pub(crate) fn new(map: Map) -> Result<EventReader, DatapathError> {
        let ring = RingBuf::try_from(map).map_err(DatapathError::map(names::EVENTS))?;
        // SAFETY: the RingBuf owns its map fd and always reports that same fd;
        // it is closed only when the RingBuf (owned by the AsyncFd) drops.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DatapathError::io("polling", names::EVENTS)(e.into_parts().1))?;
        Ok(EventReader {
            ring,
            follow_up: false,
        })
    }

    /// Opens the pinned ring buffer (e.g. for a second reader process).
    pub fn open_pinned(pin_dir: &std::path::Path) -> Result<EventReader, DatapathError> {
        let path = pin_dir.join(names::EVENTS);
        if !path.exists() {
            return Err(DatapathError::NotPinned { path });
        }
        let data = MapData::from_pin(&path).map_err(DatapathError::map(names::EVENTS))?;
        EventReader::new(Map::RingBuf(data))
    }

    /// Events available now, without waiting.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        read_all(self.ring.get_mut())
    }

    /// Waits until at least one event is available and returns all that are.
    /// Cancel-safe: events are only taken from the ring in the poll that
    /// returns them. Needs a runtime with timers (`enable_all`).
    pub async fn next_batch(&mut self) -> Result<Vec<FlowEvent>, DatapathError> {
        loop {
            let woken = if self.follow_up {
                tokio::time::timeout(FOLLOW_UP, self.ring.readable_mut())
                    .await
                    .ok()
            } else {
                Some(self.ring.readable_mut().await)
            };
            let out = match woken {
                Some(guard) => {
                    let mut guard = guard.map_err(DatapathError::io("polling", names::EVENTS))?;
                    let out = read_all(guard.get_inner_mut());
                    guard.clear_ready();
                    out
                }
                None => read_all(self.ring.get_mut()),
            };
            // After a look that found nothing, sleep until the programs wake
            // us: an idle node costs no timer wakeups.
            self.follow_up = !out.is_empty();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

fn read_all(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(ev) = FlowEvent::from_bytes(&item) {
            out.push(ev);
        }
    }
    out
}
