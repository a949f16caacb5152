//! cnpilot reports: what a reviewer reads before a policy is applied.
//!
//! - [`diff`]: a semantic YAML diff of two policy directories;
//! - [`explain`]: why one flow is allowed or denied, with the rules and the
//!   evidence behind them;
//! - [`review`]: the review of a proposal (evidence, blast radius, changes,
//!   risks) as terminal text, Markdown or one self-contained HTML file.

pub mod diff;
pub mod explain;
pub mod fixture;
pub mod review;
