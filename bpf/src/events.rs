//! The ring buffer of flow events, read asynchronously.

use aya::maps::{Map, MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::error::DatapathError;
use crate::maps::FlowEvent;
use crate::tables::names;

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(crate) fn new(map: Map) -> Result<EventReader, DatapathError> {
        let ring = RingBuf::try_from(map).map_err(DatapathError::map(names::EVENTS))?;
        // SAFETY: the RingBuf owns its map fd and always reports that same fd;
        // it is closed only when the RingBuf (owned by the AsyncFd) drops.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| DatapathError::io("polling", names::EVENTS)(e.into_parts().1))?;
        Ok(EventReader { ring })
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
        let ring = self.ring.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(ev) = FlowEvent::from_bytes(&item) {
                out.push(ev);
            }
        }
        out
    }

    /// Waits until at least one event is available and returns all that are.
    pub async fn next_batch(&mut self) -> Result<Vec<FlowEvent>, DatapathError> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(DatapathError::io("polling", names::EVENTS))?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(ev) = FlowEvent::from_bytes(&item) {
                    out.push(ev);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}
