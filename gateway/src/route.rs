//! Routing: the request path is normalized first ([`normalize`]), then the longest matching
//! `path_prefix` wins (SPEC §7). What was routed is what the upstream receives.

use std::borrow::Cow;

use crate::config::model::Route;

/// Why a request path was refused (answered 400 `invalid_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path (`*`, empty, no leading `/`).
    #[error("the request target is not an absolute path")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("the path has a malformed percent-encoding")]
    BadEncoding,
    /// `%2F`, `%5C`, `%00` or a literal `\`: a separator or NUL hidden from the router.
    #[error("the path has an encoded slash, a backslash or a NUL")]
    HiddenSeparator,
    /// `..` segments climb above the root.
    #[error("the path climbs above the root")]
    AboveRoot,
}

/// Normalizes a request path before routing, as Envoy's `normalize_path` + `merge_slashes` do,
/// so that `/api/../admin/chaos` (or `/api/%2e%2e/admin/chaos`) is routed — and forwarded — as
/// `/admin/chaos`, never as an `/api/` request that a backend would resolve elsewhere:
///
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986
///   §6.2.2.2), so encoded dots are dot segments;
/// - `%2F`, `%5C`, `%00` and a literal backslash are refused ([`PathError::HiddenSeparator`]):
///   backends disagree on whether they separate segments, so no reading of them is safe;
/// - runs of `/` are merged into one;
/// - `.` segments are removed and `..` removes the segment before it (RFC 3986 §5.2.4); a `..`
///   above the root is refused rather than clamped.
///
/// Other percent-encodings are kept as sent. Returns the input itself (no allocation) when it
/// is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(bytes) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(bytes)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the path ends with a `/` (kept, as it may be meaningful to the backend).
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = false;
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
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
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

/// True when `path` has nothing to normalize: no `%`, no `\`, no `//`, no `.` segment.
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // `/.` followed by the end, `/` or `.` starts a dot segment.
                match path.get(i + 1) {
                    None | Some(b'/') | Some(b'.') => return false,
                    _ => {}
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

/// Decodes percent-encoded unreserved characters; refuses hidden separators and NUL.
fn decode_unreserved(path: &[u8]) -> Result<String, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'\\' => return Err(PathError::HiddenSeparator),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex),
                    path.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let c = (h * 16 + l) as u8;
                if matches!(c, b'/' | b'\\' | 0) {
                    return Err(PathError::HiddenSeparator);
                }
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    out.push(c);
                } else {
                    out.extend_from_slice(&path[i..i + 3]);
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    // Only ASCII was decoded and the input was a `&str`, so this cannot fail; stay explicit.
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

/// Finds the route for `path` among `routes`, which the config keeps sorted longest prefix
/// first, so the first match is the longest. Returns its index.
pub fn find(routes: &[Route], path: &str) -> Option<usize> {
    routes
        .iter()
        .position(|r| path.starts_with(r.path_prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn route(prefix: &str) -> Route {
        Route {
            path_prefix: prefix.to_string(),
            upstream: "u".to_string(),
            timeout: Duration::from_secs(1),
            limit_req: Vec::new(),
            limit_conn: Vec::new(),
        }
    }

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(|c| c.into_owned())
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in [
            "/",
            "/api/events",
            "/api/events/EVT-001",
            "/a.b/c.d",
            "/a/.hidden",
            "/a/b/",
        ] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn dot_segments_and_slashes() {
        assert_eq!(norm("/api/../admin/chaos").unwrap(), "/admin/chaos");
        assert_eq!(norm("/api/./events").unwrap(), "/api/events");
        assert_eq!(norm("//api///events").unwrap(), "/api/events");
        assert_eq!(norm("/api/events/..").unwrap(), "/api/");
        assert_eq!(norm("/api/.").unwrap(), "/api/");
        assert_eq!(norm("/.").unwrap(), "/");
        assert_eq!(norm("/api/x/../../admin").unwrap(), "/admin");
        assert_eq!(norm("/api/..").unwrap(), "/");
        assert_eq!(norm("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(norm("/api/../../admin").unwrap_err(), PathError::AboveRoot);
        // Dots inside a segment are not dot segments.
        assert_eq!(norm("/api/..a/b").unwrap(), "/api/..a/b");
    }

    #[test]
    fn encoded_forms() {
        assert_eq!(norm("/api/%2e%2e/admin/chaos").unwrap(), "/admin/chaos");
        assert_eq!(norm("/api/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/api/%65vents").unwrap(), "/api/events");
        // Reserved characters stay encoded.
        assert_eq!(norm("/api/a%20b%3F").unwrap(), "/api/a%20b%3F");
        assert_eq!(
            norm("/api%2F..%2Fadmin").unwrap_err(),
            PathError::HiddenSeparator
        );
        assert_eq!(norm("/api%2f..").unwrap_err(), PathError::HiddenSeparator);
        assert_eq!(norm("/api/%5c..").unwrap_err(), PathError::HiddenSeparator);
        assert_eq!(
            norm("/api\\..\\admin").unwrap_err(),
            PathError::HiddenSeparator
        );
        assert_eq!(norm("/api/%00").unwrap_err(), PathError::HiddenSeparator);
        assert_eq!(norm("/api/%zz").unwrap_err(), PathError::BadEncoding);
        assert_eq!(norm("/api/%2").unwrap_err(), PathError::BadEncoding);
        assert_eq!(norm("*").unwrap_err(), PathError::NotAbsolute);
        assert_eq!(norm("").unwrap_err(), PathError::NotAbsolute);
    }

    #[test]
    fn longest_prefix_wins_when_sorted() {
        let routes = vec![route("/api/reservations"), route("/api/"), route("/")];
        assert_eq!(find(&routes, "/api/reservations/1"), Some(0));
        assert_eq!(find(&routes, "/api/events"), Some(1));
        assert_eq!(find(&routes, "/other"), Some(2));
        assert_eq!(find(&routes[..2], "/other"), None);
    }
}
