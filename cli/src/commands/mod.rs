pub mod agent;
pub mod bench;
pub mod demo;
pub mod learn;
pub mod policy;
