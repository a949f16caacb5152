//! cnpilot recommender crate.
