//! cnpilot datapath: the C eBPF programs (tc, on pods' veths), the one
//! header that defines their maps (`c/cnpilot.h`), its Rust mirror
//! ([`maps`]), and the aya loader ([`Datapath`]).

pub mod error;
pub mod events;
pub mod loader;
pub mod maps;
pub mod netns;
#[cfg(feature = "bench")]
pub mod ringbench;
pub mod sys;
pub mod tables;

#[cfg(feature = "testbed")]
pub mod testbed;
#[cfg(feature = "testbed")]
pub mod testing;

pub use error::DatapathError;
pub use events::EventReader;
pub use loader::{
    attached_interfaces, detach, detach_all, register_proxy_listener, tcx_programs, unpin_all,
    Datapath, DEFAULT_PIN_DIR,
};
pub use maps::Mode;
pub use tables::{HostPath, IpcacheEntry, Tables};
