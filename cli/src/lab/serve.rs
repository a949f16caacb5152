//! `cnpilot lab serve` (hidden): the daemon `lab up` starts inside a pod's
//! network namespace (or the world's) to run that pod's servers.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::dns::{self, NameTable};
use super::http::{serve_connection, HttpApp};
use super::scenario::{Protocol, Server, ServerKind};
use super::state::LabState;
use super::up::ready_path;

pub enum Serve<'a> {
    Pod(&'a str),
    World,
}

pub fn serve(dir: &Path, which: Serve<'_>) -> anyhow::Result<()> {
    let lab = LabState::load_from(dir)?;
    let mut listeners: Vec<(Ipv4Addr, Server, String)> = Vec::new();
    match which {
        Serve::Pod(selector) => {
            let (ns, name) = selector
                .split_once('/')
                .with_context(|| format!("--pod {selector}: expected NAMESPACE/POD"))?;
            let pod = lab
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .with_context(|| format!("no pod {selector} in the lab state"))?;
            let w = lab
                .scenario
                .workload(&pod.namespace, &pod.workload)
                .with_context(|| format!("no workload for pod {selector} in the scenario"))?;
            for s in &w.servers {
                listeners.push((Ipv4Addr::UNSPECIFIED, s.clone(), selector.to_string()));
            }
        }
        Serve::World => {
            for h in &lab.scenario.world {
                let who = h.name.clone().unwrap_or_else(|| h.address.to_string());
                for s in &h.servers {
                    listeners.push((h.address, s.clone(), format!("world/{who}")));
                }
            }
        }
    }
    if listeners.is_empty() {
        bail!("nothing to serve");
    }
    let names = Arc::new(NameTable::from_lab(&lab));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        let mut tasks = Vec::new();
        for (ip, server, who) in listeners {
            let addr = SocketAddr::from((ip, server.port));
            let task = match server.protocol {
                Protocol::Tcp => {
                    let listener = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding tcp {addr}"))?;
                    tokio::spawn(run_tcp(listener, server, who, names.clone()))
                }
                Protocol::Udp => {
                    let socket = UdpSocket::bind(addr)
                        .await
                        .with_context(|| format!("binding udp {addr}"))?;
                    tokio::spawn(run_udp(socket, server.kind, names.clone()))
                }
            };
            tracing::info!(%addr, "serving");
            tasks.push(task);
        }
        // Every socket is bound: `lab up` may return.
        let ready = ready_path(dir, std::process::id());
        if let Some(parent) = ready.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&ready, b"")?;
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
}

async fn run_tcp(listener: TcpListener, server: Server, who: String, names: Arc<NameTable>) {
    let app = Arc::new(HttpApp {
        routes: server.routes.clone(),
        pod: who,
    });
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!("accept: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (kind, app, names) = (server.kind, app.clone(), names.clone());
        tokio::spawn(async move {
            let result = match kind {
                ServerKind::Http => serve_connection(stream, app).await,
                ServerKind::Echo => echo_tcp(stream).await,
                ServerKind::Dns => dns_tcp(stream, &names).await,
            };
            if let Err(err) = result {
                tracing::debug!(%peer, "connection: {err}");
            }
        });
    }
}

async fn echo_tcp(mut stream: TcpStream) -> std::io::Result<()> {
    let (mut r, mut w) = stream.split();
    tokio::io::copy(&mut r, &mut w).await?;
    w.shutdown().await
}

async fn dns_tcp(mut stream: TcpStream, names: &NameTable) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut msg).await?;
        let reply = match dns::parse_query(&msg) {
            Ok(q) => dns::answer(&q, names),
            Err(Some(reply)) => reply,
            Err(None) => return Ok(()),
        };
        stream
            .write_all(&(reply.len() as u16).to_be_bytes())
            .await?;
        stream.write_all(&reply).await?;
    }
}

async fn run_udp(socket: UdpSocket, kind: ServerKind, names: Arc<NameTable>) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(err) => {
                tracing::warn!("recv: {err}");
                continue;
            }
        };
        let reply = match kind {
            ServerKind::Dns => match dns::parse_query(&buf[..n]) {
                Ok(q) => Some(dns::answer(&q, &names)),
                Err(reply) => reply,
            },
            // Validation keeps http on tcp; echo whatever else arrives.
            ServerKind::Echo | ServerKind::Http => Some(buf[..n].to_vec()),
        };
        if let Some(reply) = reply {
            if let Err(err) = socket.send_to(&reply, peer).await {
                tracing::debug!(%peer, "send: {err}");
            }
        }
    }
}
