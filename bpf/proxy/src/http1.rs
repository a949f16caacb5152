//! HTTP/1.1 message heads and body framing, strict where a lenient reading
//! would let the proxy and the server see different requests (smuggling):
//! duplicate `Content-Length`, `Transfer-Encoding` with `Content-Length`,
//! any transfer-coding but a lone `chunked`, obsolete line folding, a bare
//! LF, more than one `Host`, a head over [`MAX_HEAD`] are all rejected.

use super::normalize::{parse_target, Target};

/// Largest request or response head accepted (Envoy's default is 60 KiB).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const MAX_CHUNK_LINE: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    Empty,
    Length(u64),
    Chunked,
    /// Responses only: the body ends when the server closes.
    UntilClose,
}

#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    pub target: Target,
    /// The absolute-form authority, else the `Host` header.
    pub host: Option<String>,
    pub headers: Vec<(String, String)>,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    /// An HTTP/1.0 request: its connection persists only if the response
    /// says `Connection: keep-alive` (RFC 7230 appendix A.1.2).
    pub http10: bool,
    /// Bytes of the head in the client's stream.
    pub head_len: usize,
    /// The head sent upstream: request line rebuilt with the normalized
    /// origin-form target, header section byte for byte.
    pub forward_head: Vec<u8>,
}

/// Finds the end of a head incrementally: `scanned` remembers how far an
/// earlier call got, so a head sent one byte per segment costs O(n) in all.
#[derive(Debug, Default)]
pub struct HeadScanner {
    scanned: usize,
}

impl HeadScanner {
    /// `Ok(Some(len))` when `buf` starts with a complete head of `len` bytes.
    pub fn find_end(&mut self, buf: &[u8]) -> Result<Option<usize>, Malformed> {
        // A request starts with a method token: bytes that cannot begin one
        // (a TLS hello, a DNS length prefix, any binary protocol) are known
        // not to be HTTP at once, instead of after the head timeout, so a
        // visibility port relays them without delay.
        if !starts_like_a_method(buf) {
            return Err(Malformed(
                "not an HTTP request: the first bytes are not a method",
            ));
        }
        let mut i = self.scanned;
        while i < buf.len() {
            if buf[i] == b'\n' {
                if i == 0 || buf[i - 1] != b'\r' {
                    return Err(Malformed("bare LF in head"));
                }
                if i >= 3 && &buf[i - 3..=i] == b"\r\n\r\n" {
                    self.scanned = 0;
                    if i + 1 > MAX_HEAD {
                        return Err(Malformed("head larger than 64 KiB"));
                    }
                    return Ok(Some(i + 1));
                }
            }
            i += 1;
        }
        self.scanned = buf.len();
        if buf.len() > MAX_HEAD {
            return Err(Malformed("head larger than 64 KiB"));
        }
        Ok(None)
    }
}

/// Whether `buf` (maybe a prefix of the request) can begin `METHOD SP`:
/// RFC 9110 token characters up to the first space.
fn starts_like_a_method(buf: &[u8]) -> bool {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return i > 0;
        }
        if !tchar(b) {
            return false;
        }
    }
    true
}

fn connection_tokens(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Parses a complete head (`head` ends with the empty line).
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, Malformed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        Ok(_) => return Err(Malformed("head does not parse to its end")),
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed("too many header fields")),
        Err(_) => return Err(Malformed("invalid request head")),
    }
    let (Some(method), Some(raw_target), Some(version)) = (req.method, req.path, req.version)
    else {
        return Err(Malformed("incomplete request line"));
    };
    let target = parse_target(raw_target, method).map_err(Malformed)?;

    let mut headers = Vec::with_capacity(req.headers.len());
    let (mut content_length, mut cl_count, mut te_count) = (None, 0, 0);
    let (mut host, mut host_count) = (None, 0);
    let (mut close, mut keep_alive_token) = (false, false);
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match name.as_str() {
            "content-length" => {
                cl_count += 1;
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Malformed("Content-Length is not a number"));
                }
                content_length = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| Malformed("Content-Length out of range"))?,
                );
            }
            "transfer-encoding" => {
                te_count += 1;
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(Malformed("transfer-coding other than a lone chunked"));
                }
            }
            "host" => {
                host_count += 1;
                host = Some(value.to_ascii_lowercase());
            }
            "connection" => {
                for token in connection_tokens(&value) {
                    close |= token == "close";
                    keep_alive_token |= token == "keep-alive";
                }
            }
            _ => {}
        }
        headers.push((name, value));
    }
    if cl_count > 1 {
        return Err(Malformed("duplicate Content-Length"));
    }
    if te_count > 1 {
        return Err(Malformed("duplicate Transfer-Encoding"));
    }
    if te_count == 1 && cl_count == 1 {
        return Err(Malformed("Transfer-Encoding with Content-Length"));
    }
    if te_count == 1 && version == 0 {
        return Err(Malformed("Transfer-Encoding in HTTP/1.0"));
    }
    if host_count > 1 {
        return Err(Malformed("duplicate Host"));
    }
    if version == 1 && host_count == 0 {
        return Err(Malformed("HTTP/1.1 request without Host"));
    }
    if let (Some(authority), Some(h)) = (&target.authority, &host) {
        if authority != h {
            return Err(Malformed("Host differs from the absolute-form authority"));
        }
    }
    let framing = match (te_count, content_length) {
        (1, _) => BodyFraming::Chunked,
        (_, Some(0)) | (_, None) => BodyFraming::Empty,
        (_, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = !close && (version == 1 || keep_alive_token);

    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(Malformed("no request line"))?;
    let origin = target.origin_form();
    let mut forward_head = Vec::with_capacity(head.len() + origin.len());
    forward_head.extend_from_slice(method.as_bytes());
    forward_head.push(b' ');
    forward_head.extend_from_slice(origin.as_bytes());
    forward_head.extend_from_slice(if version == 0 {
        b" HTTP/1.0"
    } else {
        b" HTTP/1.1"
    });
    forward_head.extend_from_slice(&head[line_end..]);

    Ok(RequestHead {
        method: method.to_string(),
        host: target.authority.clone().or(host),
        target,
        headers,
        framing,
        keep_alive,
        http10: version == 0,
        head_len: head.len(),
        forward_head,
    })
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: BodyFraming,
    /// The server will close (or the body is close-delimited).
    pub close: bool,
    /// `Connection: keep-alive` is present (what an HTTP/1.0 client needs).
    pub keep_alive_token: bool,
    pub head_len: usize,
}

/// Parses a response head at the start of `buf`; `Ok(None)` if incomplete.
/// Servers are trusted more than clients, but framing is still unambiguous.
pub fn parse_response_head(
    buf: &[u8],
    request_method: &str,
) -> Result<Option<ResponseHead>, Malformed> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Malformed("response head larger than 64 KiB"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed("invalid response head")),
    };
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let (mut content_length, mut chunked, mut close, mut keep_alive_token) =
        (None, false, false, false);
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| Malformed("response Content-Length is not a number"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Malformed("conflicting response Content-Length"));
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in connection_tokens(&value) {
                close |= token == "close";
                keep_alive_token |= token == "keep-alive";
            }
        }
    }
    let bodyless =
        request_method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    let framing = if bodyless {
        BodyFraming::Empty
    } else if chunked {
        BodyFraming::Chunked
    } else {
        match content_length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    let close = close || (version == 0 && !keep_alive_token) || framing == BodyFraming::UntilClose;
    Ok(Some(ResponseHead {
        status,
        framing,
        close,
        keep_alive_token,
        head_len,
    }))
}

#[derive(Clone, Copy, Debug)]
enum ChunkState {
    Size {
        digits: usize,
        line: usize,
        in_ext: bool,
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    TrailerLine {
        len: usize,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// Walks a chunked body without decoding it, so the proxy forwards the
/// bytes exactly as received and still knows where the message ends.
#[derive(Debug)]
pub struct ChunkedScanner {
    state: ChunkState,
    trailer_bytes: usize,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self {
            state: ChunkState::Size {
                digits: 0,
                line: 0,
                in_ext: false,
                value: 0,
            },
            trailer_bytes: 0,
        }
    }
}

impl ChunkedScanner {
    pub fn is_done(&self) -> bool {
        matches!(self.state, ChunkState::Done)
    }

    /// How many bytes at the start of `buf` belong to the body; stops at its end.
    pub fn scan(&mut self, buf: &[u8]) -> Result<usize, Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Data(n) => {
                    let take = n.min((buf.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == n {
                        ChunkState::DataCr
                    } else {
                        ChunkState::Data(n - take)
                    };
                    continue;
                }
                ChunkState::Size {
                    digits,
                    line,
                    in_ext,
                    value,
                } => {
                    if line > MAX_CHUNK_LINE {
                        return Err(Malformed("chunk-size line too long"));
                    }
                    match b {
                        b'\r' if digits > 0 => ChunkState::SizeLf { value },
                        b'\n' => return Err(Malformed("bare LF in chunked body")),
                        _ if in_ext => ChunkState::Size {
                            digits,
                            line: line + 1,
                            in_ext,
                            value,
                        },
                        b';' | b' ' | b'\t' if digits > 0 => ChunkState::Size {
                            digits,
                            line: line + 1,
                            in_ext: true,
                            value,
                        },
                        _ => {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or(Malformed("invalid chunk size"))?;
                            if digits >= 15 {
                                return Err(Malformed("chunk size too large"));
                            }
                            ChunkState::Size {
                                digits: digits + 1,
                                line: line + 1,
                                in_ext,
                                value: value * 16 + u64::from(d),
                            }
                        }
                    }
                }
                ChunkState::SizeLf { value } => match b {
                    b'\n' if value == 0 => ChunkState::TrailerLine { len: 0 },
                    b'\n' => ChunkState::Data(value),
                    _ => return Err(Malformed("chunk-size line not ended by CRLF")),
                },
                ChunkState::DataCr => match b {
                    b'\r' => ChunkState::DataLf,
                    _ => return Err(Malformed("chunk data not followed by CRLF")),
                },
                ChunkState::DataLf => match b {
                    b'\n' => ChunkState::Size {
                        digits: 0,
                        line: 0,
                        in_ext: false,
                        value: 0,
                    },
                    _ => return Err(Malformed("chunk data not followed by CRLF")),
                },
                ChunkState::TrailerLine { len } => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > MAX_HEAD {
                        return Err(Malformed("trailer section too large"));
                    }
                    match b {
                        b'\r' => ChunkState::TrailerLf { empty: len == 0 },
                        b'\n' => return Err(Malformed("bare LF in trailer")),
                        _ => ChunkState::TrailerLine { len: len + 1 },
                    }
                }
                ChunkState::TrailerLf { empty } => match b {
                    b'\n' if empty => {
                        i += 1;
                        self.state = ChunkState::Done;
                        return Ok(i);
                    }
                    b'\n' => ChunkState::TrailerLine { len: 0 },
                    _ => return Err(Malformed("trailer line not ended by CRLF")),
                },
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod scanner_tests {
    use super::*;

    #[test]
    fn binary_bytes_are_not_http_at_once() {
        let mut s = HeadScanner::default();
        // A DNS-over-TCP length prefix, a TLS ClientHello.
        assert!(s.find_end(&[0x00, 0x39, 0x12, 0x34]).is_err());
        assert!(HeadScanner::default()
            .find_end(&[0x16, 0x03, 0x01])
            .is_err());
        assert!(HeadScanner::default().find_end(b" GET / HTTP/1.1").is_err());
        // A method arriving a byte at a time is still a method.
        let mut s = HeadScanner::default();
        assert_eq!(s.find_end(b"GE").unwrap(), None);
        assert_eq!(s.find_end(b"GET /x HTTP/1.1\r\n").unwrap(), None);
        assert_eq!(s.find_end(b"GET /x HTTP/1.1\r\n\r\n").unwrap(), Some(19));
    }
}
