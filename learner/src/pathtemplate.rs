//! HTTP path templates: the segments that identify one object (numbers,
//! UUIDs, long hex strings) collapse to `{id}`, so `/api/v1/charges/42` and
//! `/api/v1/charges/43` become one rule, `/api/v1/charges/{id}`.

use std::borrow::Cow;

/// The placeholder that replaces an identifier segment.
pub const ID: &str = "{id}";

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-') && s.split('-').all(is_hex)
}

/// Is this path segment an identifier rather than a name?
pub fn is_identifier(segment: &str) -> bool {
    if segment.is_empty() {
        return false;
    }
    if segment.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    if is_uuid(segment) {
        return true;
    }
    // Hex of 8+ characters with at least one digit: object ids, hashes,
    // Mongo ObjectIds; the digit rule keeps words like `deadbeef`-free
    // names (`facade`, `accepted`) as they are.
    segment.len() >= 8 && is_hex(segment) && segment.bytes().any(|b| b.is_ascii_digit())
}

/// Template of a path (no query string). Borrowed when nothing changes.
pub fn template(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(is_identifier) {
        return Cow::Borrowed(path);
    }
    let parts: Vec<&str> = path
        .split('/')
        .map(|seg| if is_identifier(seg) { ID } else { seg })
        .collect();
    Cow::Owned(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_collapse() {
        assert_eq!(template("/api/v1/charges/42"), "/api/v1/charges/{id}");
        assert_eq!(
            template("/users/3f2504e0-4f89-11d3-9a0c-0305e82c3301/orders/7"),
            "/users/{id}/orders/{id}"
        );
        assert_eq!(
            template("/objects/507f1f77bcf86cd799439011"),
            "/objects/{id}"
        );
    }

    #[test]
    fn names_stay() {
        assert_eq!(template("/api/v1/charges"), "/api/v1/charges");
        assert_eq!(template("/"), "/");
        assert_eq!(
            template("/static/facade/accepted"),
            "/static/facade/accepted"
        );
        // v1 is a version, not an id.
        assert_eq!(template("/v1/abc123"), "/v1/abc123");
    }
}
