//! cnpilot learner: from observed traffic to a flow table.
//!
//! One function per stage: [`inventory::Inventory::resolve`] turns an
//! address into an identity when the packet is seen, a [`record::FlowRecord`]
//! carries it, [`store::FlowStore`] keeps records crash-safe in Parquet,
//! [`hubble::import`] brings in Hubble exports, and [`aggregate::learn`]
//! turns a store into the aggregated flow table.

pub mod aggregate;
pub mod hubble;
pub mod identity;
pub mod inventory;
pub mod pathtemplate;
pub mod record;
pub mod store;
pub mod synth;

pub use identity::{IdentityAllocator, Labels, ReservedIdentity};
pub use inventory::{Inventory, InventorySource};
pub use record::{Direction, DnsAnswer, FlowRecord, L7Protocol, Peer, Verdict, L7};
pub use store::FlowStore;
