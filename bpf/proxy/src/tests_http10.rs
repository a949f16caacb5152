//! HTTP/1.0 `Connection: keep-alive` through the proxy (issue 18: `ab -k`
//! hung). An HTTP/1.0 connection persists only if the answer says
//! `keep-alive`; otherwise the client reads until the server closes, so the
//! proxy must close when the server's answer said nothing. Loopback,
//! explicit mode, no root; 127.0.0.2 is frontend-app (GET charges allowed,
//! POST refunds denied).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;

use super::listener::{bind_explicit, L7Proxy, ProxyConfig};
use super::policy::{IdentityResolver, L7Mode, ModeResolver};
use super::tests::article_policy;

struct Ids;

impl IdentityResolver for Ids {
    fn identity_of(&self, ip: IpAddr) -> u32 {
        match ip {
            IpAddr::V4(v4) if v4.octets() == [127, 0, 0, 2] => 1001,
            _ => 2000,
        }
    }
}

struct Enforce;

impl ModeResolver for Enforce {
    fn mode_for(&self, _: IpAddr, _: u32) -> L7Mode {
        L7Mode::Enforce
    }
}

/// An upstream that answers every request with a 200 carrying
/// `connection` (or no Connection header) and keeps the connection open.
async fn upstream(connection: Option<&'static str>) -> SocketAddr {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let extra = connection
                            .map(|c| format!("Connection: {c}\r\n"))
                            .unwrap_or_default();
                        let resp = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{extra}\r\nok");
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

async fn proxy_to(up: SocketAddr) -> SocketAddr {
    let listener =
        TcpListener::from_std(bind_explicit("127.0.0.1:0".parse().unwrap()).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::channel(1024);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let proxy = L7Proxy::new(
        ProxyConfig::explicit(up),
        Arc::new(Ids),
        Arc::new(article_policy(up.port())),
        Arc::new(Enforce),
        tx,
    );
    tokio::spawn(async move {
        let _ = proxy.serve(listener).await;
    });
    addr
}

async fn client(proxy: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))
        .unwrap();
    socket.connect(proxy).await.unwrap()
}

/// Reads one response with a Content-Length body; its head, lowercased.
async fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed inside a head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head
}

async fn closes(s: &mut TcpStream) -> bool {
    let mut rest = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut rest)).await,
        Ok(Ok(0))
    )
}

const GET10: &[u8] = b"GET /api/v1/charges HTTP/1.0\r\nHost: p\r\nConnection: Keep-Alive\r\n\r\n";
const DENIED10: &[u8] =
    b"POST /api/v1/refunds HTTP/1.0\r\nHost: p\r\nConnection: Keep-Alive\r\n\r\n";

#[tokio::test]
async fn http10_keep_alive_without_the_servers_consent_is_closed() {
    let proxy = proxy_to(upstream(None).await).await;
    let mut s = client(proxy).await;
    s.write_all(GET10).await.unwrap();
    let head = response(&mut s).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        closes(&mut s).await,
        "an HTTP/1.0 client not told keep-alive waits for the close"
    );
}

#[tokio::test]
async fn http10_keep_alive_the_server_confirms_is_kept() {
    let proxy = proxy_to(upstream(Some("keep-alive")).await).await;
    let mut s = client(proxy).await;
    for _ in 0..3 {
        s.write_all(GET10).await.unwrap();
        let head = response(&mut s).await;
        assert!(head.contains("connection: keep-alive"), "{head}");
    }
}

#[tokio::test]
async fn http10_keep_alive_403_says_keep_alive_and_the_connection_goes_on() {
    let proxy = proxy_to(upstream(Some("keep-alive")).await).await;
    let mut s = client(proxy).await;
    s.write_all(DENIED10).await.unwrap();
    let head = response(&mut s).await;
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: keep-alive"), "{head}");
    s.write_all(GET10).await.unwrap();
    assert!(response(&mut s).await.starts_with("http/1.1 200"));
    // Without keep-alive, HTTP/1.0 is answered and closed.
    let mut s = client(proxy).await;
    s.write_all(b"POST /api/v1/refunds HTTP/1.0\r\nHost: p\r\n\r\n")
        .await
        .unwrap();
    assert!(response(&mut s).await.contains("connection: close"));
    assert!(closes(&mut s).await);
}
