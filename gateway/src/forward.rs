//! The header fields this hop adds to the request it sends upstream (`X-Forwarded-For`,
//! `X-Real-IP`, `X-Request-Id`), and how they are written.
//!
//! Why not `RequestHeader::insert_header`: Pingora's request head keeps a second, private map
//! with each name's original case, and neither map can be reserved. Every insert parses the
//! name into a newly allocated `HeaderName`, clones it into the case map, and both maps,
//! sized to the header count the client sent, regrow (three times each for a client that
//! sends only `Host`). That was ~7,000 instructions per request of the gateway's ~34,000 over a
//! bare Pingora proxy (docs/benchmarks.md, "Instructions per request").
//!
//! [`set_fields`] instead takes the head apart into `http`'s `Parts`, reserves once, inserts
//! the pre-parsed names and builds the head again without the case map. What the upstream sees
//! differs only in the case of header names: the twelve Pingora knows (`Host`, `Content-Type`,
//! `Content-Length`, `Connection`, ...) go out title-cased, all others in lower case
//! (`user-agent`), as Pingora writes every head that came over HTTP/2 and as HTTP/2 itself
//! sends them. Field names are case-insensitive (RFC 9110 §5.1); values, their order and the
//! request-target are kept byte for byte.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::{ErrorType, OrErr, Result};

/// `X-Request-Id`: one value for the upstream request, the response and the access log.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`: the client's own entries, then the address this hop saw.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Real-IP`: the client after trusted proxies.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Sets each field of `fields` that is `Some` on `req`, replacing any field of that name,
/// with one reservation for all of them. `req` loses its header-name case map (see the module
/// docs); everything else (method, target, version, the other fields in order, extensions) is
/// kept.
pub fn set_fields<const N: usize>(
    req: &mut RequestHeader,
    fields: [Option<(HeaderName, HeaderValue)>; N],
) -> Result<()> {
    // A target the URI does not reproduce (absolute-form, not UTF-8) is kept aside and set
    // again: `RequestHeader::from(Parts)` serializes the URI.
    let raw_target = (!target_from_uri(req)).then(|| req.raw_path().to_vec());
    let send_end_stream = req.send_end_stream();
    // No allocation: an empty header map, the default URI.
    let empty = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(req, empty).into();
    let count = fields.iter().flatten().count();
    parts
        .headers
        .try_reserve(count)
        .or_err(ErrorType::InvalidHTTPHeader, "too many header fields")?;
    for (name, value) in fields.into_iter().flatten() {
        parts
            .headers
            .try_insert(name, value)
            .or_err(ErrorType::InvalidHTTPHeader, "too many header fields")?;
    }
    let mut head = RequestHeader::from(parts);
    if let Some(target) = raw_target {
        head.set_raw_path(&target)?;
    }
    if let Some(end) = send_end_stream {
        head.set_send_end_stream(end);
    }
    *req = head;
    Ok(())
}

/// Whether `req`'s request-target on the wire is its URI's path and query.
fn target_from_uri(req: &RequestHeader) -> bool {
    let from_uri = req.uri.path_and_query().map(|pq| pq.as_str().as_bytes());
    req.raw_path_is_utf8() && from_uri == Some(req.raw_path())
}

/// The `X-Forwarded-For` value sent upstream: the client's own entries (every header line, in
/// order) followed by `peer`, the address this hop saw.
pub fn forwarded_for(req: &RequestHeader, peer: HeaderValue) -> Result<HeaderValue> {
    let mut xff = String::new();
    for v in req.headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            if !xff.is_empty() {
                xff.push_str(", ");
            }
            xff.push_str(s.trim());
        }
    }
    if xff.is_empty() {
        // The common case: no proxy before this one, the peer's text is the whole value.
        return Ok(peer);
    }
    xff.push_str(", ");
    xff.push_str(peer.to_str().unwrap_or_default());
    HeaderValue::try_from(xff).or_err(ErrorType::InvalidHTTPHeader, "x-forwarded-for")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    /// The head as Pingora writes it to an HTTP/1.1 upstream.
    fn wire(req: &RequestHeader) -> String {
        let mut buf = BytesMut::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf.to_vec()).unwrap()
    }

    fn head(target: &[u8], fields: &[(&'static str, &'static str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", target, Some(fields.len())).unwrap();
        for (name, value) in fields {
            req.append_header(*name, *value).unwrap();
        }
        req
    }

    fn value(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn adds_and_replaces_fields_and_keeps_the_rest_in_order() {
        let mut req = head(
            b"/a/b?x=1",
            &[
                ("Host", "example.test"),
                ("X-Request-Id", "from-client"),
                ("Accept", "a"),
                ("Accept", "b"),
            ],
        );
        set_fields(
            &mut req,
            [
                Some((X_FORWARDED_FOR, value("10.0.0.1"))),
                None,
                Some((X_REQUEST_ID, value("abc"))),
            ],
        )
        .unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.raw_path(), b"/a/b?x=1");
        assert_eq!(
            wire(&req),
            "Host: example.test\r\nx-request-id: abc\r\naccept: a\r\naccept: b\r\n\
             x-forwarded-for: 10.0.0.1\r\n"
        );
        assert!(!req.headers.contains_key(&X_REAL_IP));
    }

    #[test]
    fn keeps_a_target_the_uri_does_not_reproduce() {
        for target in [
            &b"http://example.test/abs?q"[..],
            b"/caf\xe9",
            b"/%7Euser?a=%20",
        ] {
            let mut req = head(target, &[("Host", "example.test")]);
            let before = (req.raw_path().to_vec(), req.raw_path_is_utf8());
            set_fields(&mut req, [Some((X_REAL_IP, value("::1")))]).unwrap();
            assert_eq!((req.raw_path().to_vec(), req.raw_path_is_utf8()), before);
            assert_eq!(req.headers[&X_REAL_IP], "::1");
        }
    }

    #[test]
    fn keeps_version_and_extensions() {
        #[derive(Clone, Debug, PartialEq)]
        struct Mark(u8);
        let mut req = head(b"/", &[]);
        req.set_version(http::Version::HTTP_10);
        req.extensions_mut().insert(Mark(7));
        set_fields(&mut req, [Some((X_REQUEST_ID, value("r")))]).unwrap();
        assert_eq!(req.version, http::Version::HTTP_10);
        assert_eq!(req.extensions.get::<Mark>(), Some(&Mark(7)));
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_every_client_entry() {
        let req = head(
            b"/",
            &[
                ("X-Forwarded-For", " 1.1.1.1 "),
                ("X-Forwarded-For", "2.2.2.2"),
            ],
        );
        let xff = forwarded_for(&req, value("3.3.3.3")).unwrap();
        assert_eq!(xff, "1.1.1.1, 2.2.2.2, 3.3.3.3");
        let plain = forwarded_for(&head(b"/", &[]), value("3.3.3.3")).unwrap();
        assert_eq!(plain, "3.3.3.3");
    }
}
