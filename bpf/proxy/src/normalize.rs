//! The request-target as Envoy (with Cilium's `normalize_path` and
//! `merge_slashes`, plus `path_with_escaped_slashes_action: REJECT_REQUEST`)
//! would see it. The proxy decides on the normalized path AND forwards the
//! normalized path, so the policy and the server always agree on which
//! resource was asked for:
//!
//! - `%XX` of an unreserved character (`A-Z a-z 0-9 - . _ ~`) is decoded
//!   (`/api/v1/%72efunds` is `/api/v1/refunds`); other escapes are kept with
//!   upper-case hex; an escape that is not `%` + two hex digits is rejected.
//! - `%2F`, `%5C`, `%00` and a literal `\` are rejected: servers disagree on
//!   them, which is exactly what a bypass needs.
//! - Runs of `/` are merged; `.` and `..` segments are removed (RFC 3986
//!   5.2.4), `..` never climbs above `/`.
//! - The query is split off at the first `?` and kept byte for byte.
//! - Absolute-form (`http://host/p`) keeps only its path for matching and
//!   forwarding; its authority is reported as the host. Other forms
//!   (authority-form, `https://`) are rejected; `*` only with OPTIONS.

/// A request-target reduced to what the policy matches on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub path: String,
    pub query: Option<String>,
    /// The authority of an absolute-form target.
    pub authority: Option<String>,
}

impl Target {
    /// The origin-form target the upstream receives.
    pub fn origin_form(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

pub fn parse_target(raw: &str, method: &str) -> Result<Target, &'static str> {
    if raw.contains('#') {
        return Err("fragment in request-target");
    }
    if raw == "*" {
        if method == "OPTIONS" {
            return Ok(Target {
                path: "*".to_string(),
                query: None,
                authority: None,
            });
        }
        return Err("asterisk-form target outside OPTIONS");
    }
    let (authority, rest) = if raw.starts_with('/') {
        (None, raw)
    } else if raw.len() > 7 && raw[..7].eq_ignore_ascii_case("http://") {
        let after = &raw[7..];
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.is_empty() || authority.contains('@') {
            return Err("absolute-form target without a plain authority");
        }
        let rest = &after[end..];
        (Some(authority.to_ascii_lowercase()), rest)
    } else {
        return Err("request-target is neither origin-form nor http absolute-form");
    };
    let (raw_path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (rest, None),
    };
    let path = if raw_path.is_empty() {
        "/".to_string()
    } else {
        normalize_path(raw_path)?
    };
    Ok(Target {
        path,
        query,
        authority,
    })
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalizes an origin-form path (starting with `/`).
pub fn normalize_path(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err("malformed percent-escape in path");
                };
                let value = hi * 16 + lo;
                if matches!(value, b'/' | b'\\' | 0) {
                    return Err("escaped slash, backslash or NUL in path");
                }
                if is_unreserved(value) {
                    decoded.push(value);
                } else {
                    decoded.extend_from_slice(format!("%{value:02X}").as_bytes());
                }
                i += 3;
            }
            b'\\' => return Err("backslash in path"),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| "path is not UTF-8")?;
    if !decoded.starts_with('/') {
        return Err("path does not start with /");
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tricks_normalize_to_the_plain_path() {
        for raw in [
            "/api/v1/refunds",
            "//api/v1/refunds",
            "/api//v1///refunds",
            "/api/v1/charges/../refunds",
            "/api/v1/./refunds",
            "/api/v1/%72efunds",
            "/api/v1/%72%65funds",
            "/api/v1/charges/%2e%2e/refunds",
            "/../api/v1/refunds",
        ] {
            assert_eq!(normalize_path(raw).unwrap(), "/api/v1/refunds", "{raw}");
        }
    }

    #[test]
    fn trailing_slash_and_root_are_kept() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("/a/b/").unwrap(), "/a/b/");
        assert_eq!(normalize_path("/a/..").unwrap(), "/");
        assert_eq!(normalize_path("/a/%3b").unwrap(), "/a/%3B");
    }

    #[test]
    fn ambiguous_escapes_are_rejected() {
        for raw in [
            "/a%2Fb", "/a%2fb", "/a%5Cb", "/a%00", "/a\\b", "/a%zz", "/a%4",
        ] {
            assert!(normalize_path(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn absolute_form_keeps_the_path_and_reports_the_authority() {
        let t = parse_target("http://Evil.example:9999/api/v1/refunds?x=1", "POST").unwrap();
        assert_eq!(t.path, "/api/v1/refunds");
        assert_eq!(t.query.as_deref(), Some("x=1"));
        assert_eq!(t.authority.as_deref(), Some("evil.example:9999"));
        assert_eq!(t.origin_form(), "/api/v1/refunds?x=1");
        assert_eq!(parse_target("http://h", "GET").unwrap().path, "/");
        assert!(parse_target("https://h/x", "GET").is_err());
        assert!(parse_target("h:443", "CONNECT").is_err());
        assert!(parse_target("http://u@h/x", "GET").is_err());
        assert!(parse_target("*", "GET").is_err());
        assert_eq!(parse_target("*", "OPTIONS").unwrap().path, "*");
    }

    #[test]
    fn query_is_split_not_normalized() {
        let t = parse_target("/a//b?x=/../y", "GET").unwrap();
        assert_eq!(t.path, "/a/b");
        assert_eq!(t.query.as_deref(), Some("x=/../y"));
    }
}
