//! DNS over TCP (RFC 1035 4.2.2, RFC 7766): each message is preceded by its
//! length in two bytes. The tc program hands a pod's connection to a port
//! with DNS rules (or DNS visibility) to the proxy's transparent listener,
//! as it does HTTP connections; the accepted socket's local address is the
//! server the pod asked. Each query is decided as a UDP one is, and
//! forwarded over a TCP connection of its own from the node's address.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use super::serve::{DnsProxy, Transport};
use crate::listener::ProxyError;

/// How long a pod's connection may sit idle between queries before the
/// proxy closes it (RFC 7766 6.2.3: servers close idle connections after
/// seconds; clients reconnect).
const IDLE: Duration = Duration::from_secs(10);

impl DnsProxy {
    /// Serves `listener` (a transparent TCP listener, e.g.
    /// [`crate::listener::bind_transparent`]) until the future is dropped:
    /// one task per connection, its queries answered in order. Must run on
    /// a runtime whose threads are in the node's network namespace.
    pub async fn serve_tcp(
        self: Arc<Self>,
        listener: std::net::TcpListener,
    ) -> Result<(), ProxyError> {
        let own_port = listener.local_addr().map_err(ProxyError::Accept)?.port();
        let listener = TcpListener::from_std(listener).map_err(ProxyError::Accept)?;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "DNS proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (SocketAddr::V4(client), Ok(SocketAddr::V4(server))) = (peer, stream.local_addr())
            else {
                continue;
            };
            // A connection to the proxy's own port was not redirected:
            // forwarding it would loop.
            if server.port() == own_port {
                continue;
            }
            let me = Arc::clone(&self);
            tokio::spawn(async move { me.connection(stream, client, server).await });
        }
    }

    async fn connection(&self, mut stream: TcpStream, client: SocketAddrV4, server: SocketAddrV4) {
        loop {
            let query = match tokio::time::timeout(IDLE, read_message(&mut stream)).await {
                Ok(Ok(Some(query))) => query,
                // Closed, idle or broken: the pod's resolver reconnects.
                _ => return,
            };
            let Some(reply) = self.answer(&query, client, server, Transport::Tcp).await else {
                // No answer from the server: closing tells the pod at once
                // (RFC 7766 allows either side to close).
                return;
            };
            if let Err(e) = write_message(&mut stream, &reply).await {
                tracing::debug!(%client, error = %e, "DNS reply to the pod failed");
                return;
            }
        }
    }
}

/// Asks `server` over a TCP connection of its own (marked `mark`, so the
/// server's ingress policy sees the pod's identity) and returns the answer
/// with the query's id.
pub(super) async fn forward(
    query: &[u8],
    server: SocketAddrV4,
    mark: Option<u32>,
    limit: Duration,
) -> io::Result<Vec<u8>> {
    let socket = TcpSocket::new_v4()?;
    if let Some(mark) = mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    let id = query.get(0..2).map(|b| [b[0], b[1]]);
    let exchange = async {
        let mut stream = socket.connect(SocketAddr::V4(server)).await?;
        write_message(&mut stream, query).await?;
        loop {
            let answer = read_message(&mut stream).await?.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection before answering",
                )
            })?;
            if answer.len() >= 2 && id == Some([answer[0], answer[1]]) {
                return Ok(answer);
            }
        }
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "timed out"))?
}

/// One length-prefixed message; `None` when the peer closed between
/// messages.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

/// Writes `msg` with its length in front, in one write.
pub async fn write_message<W: AsyncWrite + Unpin>(w: &mut W, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "a DNS message over TCP is at most 65,535 bytes",
        )
    })?;
    let mut framed = Vec::with_capacity(2 + msg.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    w.write_all(&framed).await?;
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[tokio::test]
    async fn messages_round_trip_and_a_close_between_them_is_none() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write_message(&mut a, b"first").await.unwrap();
        write_message(&mut a, &[]).await.unwrap();
        drop(a);
        assert_eq!(read_message(&mut b).await.unwrap().unwrap(), b"first");
        assert_eq!(read_message(&mut b).await.unwrap().unwrap(), b"");
        assert!(read_message(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_message_cut_short_is_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(&[0, 10, 1, 2, 3]).await.unwrap();
        drop(a);
        assert!(read_message(&mut b).await.is_err());
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_writing() {
        let (mut a, _b) = tokio::io::duplex(16);
        let err = write_message(&mut a, &vec![0u8; 70_000]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    /// A real TCP server on loopback that first sends an answer with
    /// another id (which must be skipped), then the matching one.
    #[tokio::test]
    async fn forward_returns_the_answer_with_the_querys_id() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let q = read_message(&mut s).await.unwrap().unwrap();
            write_message(&mut s, &[0xFF, 0xFF, 1]).await.unwrap();
            let mut answer = q.clone();
            answer.push(42);
            write_message(&mut s, &answer).await.unwrap();
        });
        let answer = forward(&[0x12, 0x34, 7], addr, None, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer, vec![0x12, 0x34, 7, 42]);
    }

    #[tokio::test]
    async fn forward_to_a_server_that_closes_says_so() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let SocketAddr::V4(addr) = server.local_addr().unwrap() else {
            unreachable!("bound to an IPv4 address")
        };
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let _ = read_message(&mut s).await;
        });
        let err = forward(&[1, 2, 3], addr, None, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }
}
