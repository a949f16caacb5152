//! cnpilot reports crate.
