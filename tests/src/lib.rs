//! End-to-end tests live in `tests/tests/*.rs`; they run the real `cnpilot`
//! binary against a real network-namespace lab. This library only holds the
//! helpers they share.
