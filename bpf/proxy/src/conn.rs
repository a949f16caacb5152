//! One client connection: read a request head, decide, answer 403 or
//! forward, relay the response, repeat. Requests are served strictly one
//! after the other, so pipelined requests are answered in order and a
//! denied request never reaches the server, whatever came before or after.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

use super::event::{emit, L7Event, L7Verdict, ProxyStats};
use super::http1::{
    parse_request_head, parse_response_head, BodyFraming, ChunkedScanner, HeadScanner, Malformed,
    RequestHead,
};
use super::policy::{
    HttpRequestView, Identity, IdentityResolver, L7Decision, L7Mode, L7Policy, ModeResolver,
};

/// Cilium's answer to a denied request (Envoy local reply: 15-byte body).
const FORBIDDEN_HEAD: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\ncontent-type: text/plain\r\n";
const FORBIDDEN_BODY: &[u8] = b"Access denied\r\n";
const BAD_REQUEST: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nBad Request";
const BAD_GATEWAY: &[u8] = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nBad Gateway";

pub(crate) struct Shared {
    pub identities: Arc<dyn IdentityResolver>,
    pub policy: Arc<dyn L7Policy>,
    pub modes: Arc<dyn ModeResolver>,
    pub events: mpsc::Sender<L7Event>,
    pub stats: Arc<ProxyStats>,
    pub head_timeout: Duration,
    pub connect_timeout: Duration,
}

/// What is known about a connection when it is accepted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub src: SocketAddr,
    /// The original destination (`getsockname` of the accepted socket).
    pub dst: SocketAddr,
    /// Where requests go: `dst` in transparent mode.
    pub upstream: SocketAddr,
    pub src_identity: Identity,
    pub dst_identity: Identity,
    /// `SO_MARK` of the upstream socket.
    pub mark: Option<u32>,
}

struct Upstream {
    r: OwnedReadHalf,
    w: OwnedWriteHalf,
    buf: BytesMut,
}

/// Why a body could not be moved; either way the connection is closed.
#[derive(Debug)]
enum BodyError {
    Io,
    Malformed,
    Eof,
}

impl From<io::Error> for BodyError {
    fn from(_: io::Error) -> Self {
        Self::Io
    }
}

async fn read_some<R: AsyncRead + Unpin>(r: &mut R, buf: &mut BytesMut) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    r.read_buf(buf).await
}

/// Moves exactly one body from `from` (bytes already read sit in `buf`) to
/// `to`, or discards it when `to` is `None`.
async fn copy_body<R, W>(
    framing: BodyFraming,
    from: &mut R,
    buf: &mut BytesMut,
    mut to: Option<&mut W>,
) -> Result<(), BodyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match framing {
        BodyFraming::Empty => Ok(()),
        BodyFraming::Length(mut remaining) => loop {
            if buf.is_empty() && read_some(from, buf).await? == 0 {
                return Err(BodyError::Eof);
            }
            let take = remaining.min(buf.len() as u64) as usize;
            let chunk = buf.split_to(take);
            if let Some(w) = to.as_mut() {
                w.write_all(&chunk).await?;
            }
            remaining -= take as u64;
            if remaining == 0 {
                return Ok(());
            }
        },
        BodyFraming::Chunked => {
            let mut scanner = ChunkedScanner::default();
            loop {
                if !buf.is_empty() {
                    let n = scanner.scan(buf).map_err(|_| BodyError::Malformed)?;
                    let chunk = buf.split_to(n);
                    if let Some(w) = to.as_mut() {
                        w.write_all(&chunk).await?;
                    }
                    if scanner.is_done() {
                        return Ok(());
                    }
                }
                if read_some(from, buf).await? == 0 {
                    return Err(BodyError::Eof);
                }
            }
        }
        BodyFraming::UntilClose => loop {
            if !buf.is_empty() {
                let chunk = buf.split();
                if let Some(w) = to.as_mut() {
                    w.write_all(&chunk).await?;
                }
            }
            if read_some(from, buf).await? == 0 {
                return Ok(());
            }
        },
    }
}

struct ResponseOutcome {
    status: u16,
    close: bool,
    /// The response said `Connection: keep-alive`.
    keep_alive_token: bool,
    upgraded: bool,
}

/// Relays one response (and any 1xx before it). `Err(true)` when bytes of
/// it already reached the client, so no 502 can be sent any more.
async fn relay_response(
    up_r: &mut OwnedReadHalf,
    up_buf: &mut BytesMut,
    client: &mut OwnedWriteHalf,
    method: &str,
) -> Result<ResponseOutcome, bool> {
    let mut started = false;
    loop {
        let head = loop {
            match parse_response_head(up_buf, method) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(_) => return Err(started),
            }
            match read_some(up_r, up_buf).await {
                Ok(0) | Err(_) => return Err(started),
                Ok(_) => {}
            }
        };
        // A response that is already all here goes out in one write (one
        // segment to the client instead of two).
        if let BodyFraming::Length(n) = head.framing {
            let whole = head
                .head_len
                .saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
            if up_buf.len() >= whole {
                let bytes = up_buf.split_to(whole);
                client.write_all(&bytes).await.map_err(|_| true)?;
                return Ok(ResponseOutcome {
                    status: head.status,
                    close: head.close,
                    keep_alive_token: head.keep_alive_token,
                    upgraded: false,
                });
            }
        }
        let head_bytes = up_buf.split_to(head.head_len);
        client.write_all(&head_bytes).await.map_err(|_| true)?;
        started = true;
        if head.status == 101 {
            return Ok(ResponseOutcome {
                status: 101,
                close: false,
                keep_alive_token: false,
                upgraded: true,
            });
        }
        if (100..200).contains(&head.status) {
            continue;
        }
        copy_body(head.framing, up_r, up_buf, Some(client))
            .await
            .map_err(|_| true)?;
        return Ok(ResponseOutcome {
            status: head.status,
            close: head.close,
            keep_alive_token: head.keep_alive_token,
            upgraded: false,
        });
    }
}

/// Cilium's proxy mark for connections leaving a proxy that enforces
/// ingress policy: `MagicMarkIngress` (0x0A00) in bits 8-11, the source
/// identity's low 16 bits in bits 16-31 and its bits 16-23 (cluster id)
/// in bits 0-7. The datapath reads the source identity back from it and
/// must not redirect a packet carrying it to the proxy again.
pub fn upstream_mark(identity: Identity) -> u32 {
    ((identity & 0xFFFF) << 16) | 0x0A00 | ((identity >> 16) & 0xFF)
}

async fn connect_upstream(info: &ConnInfo, limit: Duration) -> io::Result<Upstream> {
    let socket = if info.upstream.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(mark) = info.mark {
        socket2::SockRef::from(&socket).set_mark(mark)?;
    }
    let stream = timeout(limit, socket.connect(info.upstream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "upstream connect timed out"))??;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    Ok(Upstream {
        r,
        w,
        buf: BytesMut::with_capacity(16 * 1024),
    })
}

pub(crate) struct Connection {
    info: ConnInfo,
    shared: Arc<Shared>,
    cr: OwnedReadHalf,
    cw: OwnedWriteHalf,
    cbuf: BytesMut,
    upstream: Option<Upstream>,
}

impl Connection {
    pub fn new(client: TcpStream, info: ConnInfo, shared: Arc<Shared>) -> Self {
        let _ = client.set_nodelay(true);
        let (cr, cw) = client.into_split();
        Self {
            info,
            shared,
            cr,
            cw,
            cbuf: BytesMut::with_capacity(16 * 1024),
            upstream: None,
        }
    }

    fn record(
        &self,
        head: Option<&RequestHead>,
        status: Option<u16>,
        verdict: L7Verdict,
        reason: String,
    ) {
        let event = L7Event {
            ts: SystemTime::now(),
            src_ip: self.info.src.ip(),
            src_identity: self.info.src_identity,
            dst_ip: self.info.dst.ip(),
            dst_identity: self.info.dst_identity,
            dport: self.info.dst.port(),
            method: head.map(|h| h.method.clone()).unwrap_or_default(),
            path: head.map(|h| h.target.path.clone()).unwrap_or_default(),
            query: head.and_then(|h| h.target.query.clone()),
            host: head.and_then(|h| h.host.clone()),
            status,
            verdict,
            reason,
        };
        emit(&self.shared.events, &self.shared.stats, event);
    }

    /// The server's mode when it is a pod here (its ingress rules, and
    /// those of a local client, are judged under it, as before); otherwise
    /// only the client's egress rules can have sent the connection here,
    /// and the client's mode decides.
    fn mode(&self) -> L7Mode {
        let modes = &self.shared.modes;
        if modes.is_local(self.info.dst_identity) {
            modes.mode_for(self.info.dst.ip(), self.info.dst_identity)
        } else {
            modes.mode_for(self.info.src.ip(), self.info.src_identity)
        }
    }

    pub async fn run(mut self) {
        let mut scanner = HeadScanner::default();
        loop {
            // The whole head must arrive within the timeout: a client that
            // trickles bytes cannot hold the connection forever.
            let deadline = Instant::now() + self.shared.head_timeout;
            let head_len = loop {
                match scanner.find_end(&self.cbuf) {
                    Ok(Some(n)) => break Ok(n),
                    Ok(None) => {}
                    Err(m) => break Err(m),
                }
                match timeout_at(deadline, read_some(&mut self.cr, &mut self.cbuf)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        if !self.cbuf.is_empty() {
                            self.record(
                                None,
                                None,
                                L7Verdict::Unparseable,
                                "connection ended or timed out inside a request head".into(),
                            );
                        }
                        return;
                    }
                }
            };
            let head = match head_len.and_then(|n| parse_request_head(&self.cbuf[..n])) {
                Ok(h) => h,
                Err(m) => return self.unparseable(m).await,
            };
            self.cbuf.advance(head.head_len);
            let keep_going = self.serve_request(&head).await;
            if !keep_going {
                let _ = self.cw.shutdown().await;
                return;
            }
        }
    }

    /// Returns whether the connection stays open for another request.
    async fn serve_request(&mut self, head: &RequestHead) -> bool {
        let mode = self.mode();
        let envoy_path = head.target.origin_form();
        let view = HttpRequestView {
            method: &head.method,
            path: &head.target.path,
            query: head.target.query.as_deref(),
            envoy_path: &envoy_path,
            host: head.host.as_deref(),
            headers: &head.headers,
        };
        let decision = self.shared.policy.decide(
            self.info.src_identity,
            self.info.dst_identity,
            self.info.dst.port(),
            &view,
        );
        let (verdict, reason) = match (decision, mode) {
            (L7Decision::Allow { rule }, _) => (L7Verdict::Allowed, rule),
            (L7Decision::Deny { reason }, L7Mode::Audit) => (L7Verdict::WouldDeny, reason),
            (L7Decision::Deny { reason }, L7Mode::Enforce) => (L7Verdict::Denied, reason),
        };
        if verdict == L7Verdict::Denied {
            return self.deny(head, reason).await;
        }
        if self.upstream.is_none() {
            match connect_upstream(&self.info, self.shared.connect_timeout).await {
                Ok(up) => self.upstream = Some(up),
                Err(e) => {
                    tracing::debug!(upstream = %self.info.upstream, error = %e, "upstream connect failed");
                    let _ = self.cw.write_all(BAD_GATEWAY).await;
                    self.record(
                        Some(head),
                        Some(502),
                        verdict,
                        format!("{reason}; upstream: {e}"),
                    );
                    return false;
                }
            }
        }
        let Some(up) = self.upstream.as_mut() else {
            return false;
        };
        if up.w.write_all(&head.forward_head).await.is_err() {
            let _ = self.cw.write_all(BAD_GATEWAY).await;
            self.record(
                Some(head),
                Some(502),
                verdict,
                format!("{reason}; upstream closed"),
            );
            return false;
        }
        // The body goes up while the response comes down: a server may
        // answer (100 Continue, or early) before it has read the body.
        let Upstream {
            r: up_r,
            w: up_w,
            buf: up_buf,
        } = up;
        let mut body_done = head.framing == BodyFraming::Empty;
        let mut body_ok = true;
        let response = {
            let body = copy_body(head.framing, &mut self.cr, &mut self.cbuf, Some(up_w));
            let relay = relay_response(up_r, up_buf, &mut self.cw, &head.method);
            tokio::pin!(body, relay);
            loop {
                tokio::select! {
                    r = &mut body, if !body_done => {
                        body_done = true;
                        body_ok = r.is_ok();
                        if !body_ok {
                            // A body that breaks its own framing or ends early:
                            // the server is left mid-request; drop both sides.
                            break Err(false);
                        }
                    }
                    r = &mut relay => break r,
                }
            }
        };
        match response {
            Ok(outcome) => {
                self.record(Some(head), Some(outcome.status), verdict, reason);
                if outcome.upgraded {
                    self.tunnel().await;
                    return false;
                }
                // A response that came before the whole body leaves the
                // request stream in an unknown place: close. An HTTP/1.0
                // client keeps the connection only if the response says
                // `keep-alive`; otherwise it waits for the close (`ab -k`
                // hung here against an HTTP/1.1 server that said nothing).
                let signalled = !head.http10 || outcome.keep_alive_token;
                body_done && body_ok && !outcome.close && head.keep_alive && signalled
            }
            Err(started) => {
                if !started {
                    let _ = self.cw.write_all(BAD_GATEWAY).await;
                }
                let status = (!started).then_some(502);
                self.record(
                    Some(head),
                    status,
                    verdict,
                    format!("{reason}; upstream failed"),
                );
                false
            }
        }
    }

    /// Enforce: 403 without forwarding. A request with a body is answered
    /// and the connection closed (after a short drain, so the client reads
    /// the 403 instead of a reset): with `Expect: 100-continue` the client
    /// may or may not send that body, and guessing would desync the stream.
    async fn deny(&mut self, head: &RequestHead, reason: String) -> bool {
        let close = !head.keep_alive || head.framing != BodyFraming::Empty;
        let mut response = FORBIDDEN_HEAD.to_vec();
        if close {
            response.extend_from_slice(b"connection: close\r\n");
        } else if head.http10 {
            // HTTP/1.0 keep-alive: persistent only when the answer says so.
            response.extend_from_slice(b"connection: keep-alive\r\n");
        }
        response.extend_from_slice(b"\r\n");
        response.extend_from_slice(FORBIDDEN_BODY);
        let written = self.cw.write_all(&response).await.is_ok();
        self.record(Some(head), Some(403), L7Verdict::Denied, reason);
        if close {
            self.linger().await;
        }
        written && !close
    }

    /// Half-closes and discards what the client still sends, briefly.
    async fn linger(&mut self) {
        let _ = self.cw.shutdown().await;
        let mut sink = [0u8; 16 * 1024];
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut total = 0usize;
        while total < 1 << 20 {
            match timeout_at(deadline, self.cr.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
    }

    async fn unparseable(mut self, why: Malformed) {
        tracing::debug!(src = %self.info.src, reason = why.0, "unparseable request");
        let rules = self.shared.policy.has_http_rules(
            self.info.src_identity,
            self.info.dst_identity,
            self.info.dst.port(),
        );
        match self.mode() {
            L7Mode::Enforce if rules => {
                let _ = self.cw.write_all(BAD_REQUEST).await;
                self.record(None, Some(400), L7Verdict::Unparseable, why.0.to_string());
                self.linger().await;
            }
            _ => {
                // Audit never breaks traffic, nor does visibility without
                // rules: from here on the connection is opaque bytes; the
                // server decides what they mean.
                self.record(None, None, L7Verdict::Unparseable, why.0.to_string());
                if self.upstream.is_none() {
                    match connect_upstream(&self.info, self.shared.connect_timeout).await {
                        Ok(up) => self.upstream = Some(up),
                        Err(_) => {
                            let _ = self.cw.write_all(BAD_GATEWAY).await;
                            return;
                        }
                    }
                }
                self.tunnel().await;
            }
        }
    }

    /// Opaque relay both ways (after `101 Switching Protocols`, or an
    /// unparseable request in audit mode).
    async fn tunnel(&mut self) {
        let Some(up) = self.upstream.as_mut() else {
            return;
        };
        if !self.cbuf.is_empty() && up.w.write_all(&self.cbuf.split()).await.is_err() {
            return;
        }
        if !up.buf.is_empty() && self.cw.write_all(&up.buf.split()).await.is_err() {
            return;
        }
        let (cr, cw) = (&mut self.cr, &mut self.cw);
        let (up_r, up_w) = (&mut up.r, &mut up.w);
        let to_server = async {
            let _ = tokio::io::copy(cr, up_w).await;
            let _ = up_w.shutdown().await;
        };
        let to_client = async {
            let _ = tokio::io::copy(up_r, cw).await;
            let _ = cw.shutdown().await;
        };
        tokio::join!(to_server, to_client);
    }
}
