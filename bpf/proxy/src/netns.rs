//! Running the proxy inside the node's network namespace: the proxy's
//! threads must live there (its transparent listener and upstream sockets
//! belong to that namespace's stack).

use std::thread::JoinHandle;

use super::listener::ProxyError;

/// Moves the calling thread into a named network namespace (`ip netns`).
pub fn enter_netns(name: &str) -> Result<(), ProxyError> {
    cnpilot_bpf::netns::enter(&cnpilot_bpf::netns::named(name))
        .map_err(|e| ProxyError::Setup(format!("setns {name}: {e}")))
}

/// Runs `f` on a new thread inside `netns`; threads it spawns (a tokio
/// runtime's workers) inherit the namespace.
pub fn spawn_in_netns<T, F>(netns: &str, f: F) -> JoinHandle<Result<T, ProxyError>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let netns = netns.to_string();
    std::thread::spawn(move || {
        enter_netns(&netns)?;
        Ok(f())
    })
}
