//! The L7 half of the datapath: a transparent HTTP/1.1 proxy that the tc
//! program hands connections to (for ports a policy's `rules.http` or an
//! audit visibility setting marks as HTTP), deciding every request of every
//! connection with the caller's policy and recording each one.
//!
//! Start it: bind a listener with [`listener::bind_transparent`] from a thread inside
//! the node namespace, build a [`listener::L7Proxy`] with a [`policy::IdentityResolver`]
//! (ipcache), a [`policy::L7Policy`] (the evaluator), a [`policy::ModeResolver`] (mode per
//! destination namespace, asked per request) and an event channel, and run
//! [`listener::L7Proxy::serve`] on a runtime whose threads are in the node namespace
//! ([`netns::spawn_in_netns`] does both).
//!
//! HTTP rules are matched by the recommender's matcher
//! (`cnpilot_recommender::compile::lookup::http_matches`): one reading of
//! `rules.http` for the evaluator, the replay and the proxy.
//!
//! Semantics follow Cilium with Envoy: method/path/host are regexes matched
//! against the whole value; the path is matched as Envoy's `:path` (path plus
//! `?query`) after normalization ([`normalize`]), and the normalized path is
//! what the server receives; a denied request gets Envoy's local reply
//! `403 Forbidden` / `Access denied`.
//!
//! Not handled: HTTP/2 (prior knowledge or h2c upgrade is relayed as an
//! opaque tunnel after `101`, unseen), TLS (opaque bytes fail to parse:
//! 400 in enforce), trailers are forwarded but not inspected, request bodies
//! are never inspected, `CONNECT`/authority-form and `https://` absolute-form
//! targets are rejected, pipelined requests are forwarded one at a time (in
//! order, never concurrently), IPv6 is untested. DNS is [`dns`]'s, over UDP.

#[cfg(any(test, feature = "testbed"))]
pub mod bench;
pub mod conn;
#[cfg(any(test, feature = "testbed"))]
pub mod demo_api;
pub mod dns;
pub mod event;
pub mod http1;
pub mod listener;
pub mod netns;
pub mod normalize;
pub mod policy;
#[cfg(any(test, feature = "testbed"))]
pub mod testbed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_http10;
