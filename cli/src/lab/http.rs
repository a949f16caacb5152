//! A small HTTP/1.1 server (keep-alive, pipelining, Content-Length bodies)
//! for the lab's workloads, and the client their callers use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::scenario::Route;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one workload serves on one port.
#[derive(Debug)]
pub struct HttpApp {
    pub routes: Vec<Route>,
    /// `namespace/pod`, echoed in every answer so a caller sees who answered.
    pub pod: String,
}

impl HttpApp {
    /// (status, reason) for a request: the matching route's status, 405 when
    /// the path exists with other methods, 404 when it does not.
    fn respond(&self, method: &str, path: &str) -> u16 {
        let path = path.split('?').next().unwrap_or(path);
        let matching = |r: &&Route| match r.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => r.path == path,
        };
        let on_path: Vec<&Route> = self.routes.iter().filter(matching).collect();
        if let Some(route) = on_path
            .iter()
            .find(|r| r.method == method || (method == "HEAD" && r.method == "GET"))
        {
            route.status
        } else if on_path.is_empty() {
            404
        } else {
            405
        }
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

struct Head {
    method: String,
    path: String,
    len: usize,
    body: usize,
    close: bool,
    /// HTTP/1.0 with `Connection: keep-alive`: the answer must say it too,
    /// or the client (`ab -k`) waits for a close that never comes.
    keep_alive_10: bool,
    chunked: bool,
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let mut body = 0;
    let mut close = req.version == Some(0);
    let mut chunked = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("content-length") {
            body = value.trim().parse().map_err(|_| ())?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.contains("close")
                || (req.version == Some(0) && !value.contains("keep-alive"));
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.contains("chunked");
        }
    }
    Ok(Some(Head {
        method: req.method.unwrap_or("").to_string(),
        path: req.path.unwrap_or("").to_string(),
        len,
        body,
        close,
        keep_alive_10: req.version == Some(0) && !close,
        chunked,
    }))
}

/// What the answer says about the connection.
#[derive(Clone, Copy, PartialEq)]
enum Persist {
    Close,
    /// HTTP/1.1's default: nothing to say.
    Default,
    /// HTTP/1.0 keep-alive.
    KeepAlive,
}

async fn write_response(
    stream: &mut TcpStream,
    status: u16,
    body: &str,
    head_only: bool,
    persist: Persist,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    match persist {
        Persist::Close => out.push_str("Connection: close\r\n"),
        Persist::KeepAlive => out.push_str("Connection: keep-alive\r\n"),
        Persist::Default => {}
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes()).await
}

/// One connection, as many requests as the client sends on it.
pub async fn serve_connection(mut stream: TcpStream, app: Arc<HttpApp>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) if buf.len() > MAX_HEAD => {
                    return write_response(&mut stream, 431, "{}", false, Persist::Close).await;
                }
                Ok(None) => {}
                Err(()) => {
                    return write_response(
                        &mut stream,
                        400,
                        "{\"error\":\"bad request\"}",
                        false,
                        Persist::Close,
                    )
                    .await
                }
            }
            let n = match tokio::time::timeout(IDLE_TIMEOUT, stream.read(&mut chunk)).await {
                Ok(read) => read?,
                Err(_) => return Ok(()),
            };
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if head.chunked {
            return write_response(
                &mut stream,
                501,
                "{\"error\":\"chunked bodies are not supported\"}",
                false,
                Persist::Close,
            )
            .await;
        }
        if head.body > MAX_BODY {
            return write_response(&mut stream, 413, "{}", false, Persist::Close).await;
        }
        while buf.len() < head.len + head.body {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head.len + head.body);
        let status = app.respond(&head.method, &head.path);
        let body = serde_json::json!({
            "pod": app.pod,
            "method": head.method,
            "path": head.path,
            "status": status,
        })
        .to_string();
        write_response(
            &mut stream,
            status,
            &body,
            head.method == "HEAD",
            if head.close {
                Persist::Close
            } else if head.keep_alive_10 {
                Persist::KeepAlive
            } else {
                Persist::Default
            },
        )
        .await?;
        if head.close {
            return stream.shutdown().await;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect timeout")]
    ConnectTimeout,
    #[error("connect: {0}")]
    Connect(std::io::ErrorKind),
    #[error("timeout")]
    Timeout,
    #[error("io: {0}")]
    Io(std::io::ErrorKind),
    #[error("bad response")]
    BadResponse,
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(ClientError::Connect(e.kind())),
        Err(_) => Err(ClientError::ConnectTimeout),
    }
}

/// One request on a new connection (`Connection: close`); the status code.
pub async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<u16, ClientError> {
    let mut stream = connect(addr, timeout).await?;
    let body = if method == "POST" || method == "PUT" || method == "PATCH" {
        "{}"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: cnpilot-lab/1\r\nAccept: */*\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| ClientError::Io(e.kind()))?;
        // Read to the end: closing with unread data would reset the connection.
        let mut buf = Vec::new();
        stream
            .read_to_end(&mut buf)
            .await
            .map_err(|e| ClientError::Io(e.kind()))?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => resp.code.ok_or(ClientError::BadResponse),
            _ => Err(ClientError::BadResponse),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> HttpApp {
        let route = |m: &str, p: &str, s| Route {
            method: m.into(),
            path: p.into(),
            status: s,
        };
        HttpApp {
            routes: vec![
                route("GET", "/api/v1/charges", 200),
                route("POST", "/api/v1/refunds", 201),
                route("GET", "/static/*", 200),
            ],
            pod: "payments/p".into(),
        }
    }

    #[test]
    fn routes() {
        let a = app();
        assert_eq!(a.respond("GET", "/api/v1/charges?limit=3"), 200);
        assert_eq!(a.respond("HEAD", "/api/v1/charges"), 200);
        assert_eq!(a.respond("POST", "/api/v1/refunds"), 201);
        assert_eq!(a.respond("POST", "/api/v1/charges"), 405);
        assert_eq!(a.respond("GET", "/nope"), 404);
        assert_eq!(a.respond("GET", "/static/app.js"), 200);
    }

    #[tokio::test]
    async fn keep_alive_and_pipelining() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Arc::new(app());
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_connection(s, app.clone()));
            }
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Two pipelined requests, then a third that closes.
        s.write_all(b"GET /api/v1/charges HTTP/1.1\r\nHost: x\r\n\r\nPOST /api/v1/refunds HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        // Bodies have no trailing newline: split on the status lines.
        let statuses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).map(|r| &r[..3]).collect();
        assert_eq!(statuses, ["200", "201", "404"], "{out}");
        assert_eq!(
            request(addr, "x", "GET", "/api/v1/charges", Duration::from_secs(2))
                .await
                .unwrap(),
            200
        );
        // HTTP/1.0 keep-alive (`ab -k`): said back, connection kept; plain
        // HTTP/1.0: closed.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let ka = b"GET /api/v1/charges HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
        let mut buf = vec![0u8; 4096];
        for _ in 0..2 {
            s.write_all(ka).await.unwrap();
            let n = s.read(&mut buf).await.unwrap();
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(text.contains("Connection: keep-alive\r\n"), "{text}");
        }
        s.write_all(b"GET /api/v1/charges HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("Connection: close\r\n"), "{out}");
    }
}
