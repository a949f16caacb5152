//! cnpilot learner crate.
