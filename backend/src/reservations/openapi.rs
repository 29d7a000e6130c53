//! The OpenAPI 3.1 document of the reservations service's public API (SPEC §4) and its health
//! routes, served at `GET /openapi.json`.
//!
//! It is generated from the code by utoipa: the `#[utoipa::path]` attributes on the handlers of
//! [`super::api`] (and [`crate::telemetry::health`]) list every status each handler can answer,
//! and the wire types derive `ToSchema` where they are defined ([`super::model`],
//! [`super::events`], [`super::validation`], [`crate::error::ErrorBody`]). Two facts that hold for
//! every route are added here, after generation, because utoipa's header objects cannot say
//! `required`: every response carries `X-Request-Id` (the request-id middleware), and every 503
//! carries `Retry-After`.
//!
//! utoipa 5.5 also writes the fields of link objects in snake_case (`operation_id`); they are
//! renamed to the OpenAPI names (`operationId`) here.
//!
//! Admin (`/admin/*`), chaos and `/metrics` routes are operator tools (SPEC §6), not described here.

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use utoipa::OpenApi;

use super::validation::{EmailText, EventIdText, IdempotencyKeyText, ReservationIdText};

/// 500 description shared by every operation.
pub const INTERNAL: &str = "`internal_error`: a bug or an unexpected error reply of the \
    inventory store (details in the service log); `chaos_error`: injected by the chaos \
    `errorRate` switch (SPEC §6). Never answered in normal operation.";

/// 503 description of reads.
pub const UNAVAILABLE_READ: &str = "`inventory_unavailable`: the inventory store (Redis) is \
    unreachable or its circuit breaker is open, and no cached copy is recent enough; \
    `service_down`: the chaos `down` switch is on. Comes back after `Retry-After` seconds.";

/// 503 description of `POST /api/reservations`.
pub const UNAVAILABLE_WRITE: &str = "`inventory_unavailable`: the inventory store (Redis) is \
    unreachable or its circuit breaker is open (nothing was held; or, with `reservationId` and \
    `\"outcome\": \"pending\"`, the payment may have been taken: the reservation is confirmed \
    automatically if the store answers within the request deadline, otherwise refunded and \
    released); \
    `payment_unavailable`: payments are down, their circuit breaker is open or the bulkhead is \
    full (the seats were released); `service_down`: the chaos `down` switch is on.";

/// 201 description of `POST /api/reservations`.
pub const CREATED_LINKS_NOTE: &str = "The reservation, `CONFIRMED`, with `history`. \
    `notification` is `queued` until the confirmation is delivered.";

/// The document's operations and their types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "reservations",
        description = "Seat reservations: events and their seats, and reservations run as a \
            saga (hold seats, charge, confirm, notify; released and refunded on failure). Every \
            error body is `{\"error\": \"<snake_case_code>\", \"message\": \"<text>\", ...}`; \
            each response lists the codes it can carry."
    ),
    paths(
        super::api::list_events,
        super::api::get_event,
        super::api::create_reservation,
        super::api::list_reservations,
        super::api::get_reservation,
        super::api::cancel_reservation,
        crate::telemetry::health,
        super::api::ready,
        openapi_json,
    ),
    // Parameter types are not collected from `params(...)` by themselves.
    components(schemas(ReservationIdText, IdempotencyKeyText, EventIdText, EmailText)),
    tags(
        (name = "events", description = "Events and their seats."),
        (name = "reservations", description = "Reservations (the saga)."),
        (name = "health", description = "Liveness, readiness and this document."),
    )
)]
pub struct ApiDoc;

/// The document as JSON, with the route-independent headers added (see the module docs).
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for (status, response) in responses.iter_mut() {
                    add_headers(status, response);
                    fix_links(response);
                }
            }
        }
    }
    doc
}

fn fix_links(response: &mut Value) {
    let Some(links) = response.get_mut("links").and_then(Value::as_object_mut) else {
        return;
    };
    for link in links.values_mut().filter_map(Value::as_object_mut) {
        for (from, to) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(v) = link.remove(from) {
                link.insert(to.to_owned(), v);
            }
        }
    }
}

fn add_headers(status: &str, response: &mut Value) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    let headers = response
        .entry("headers")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(headers) = headers else { return };
    headers.insert(
        "X-Request-Id".to_owned(),
        json!({
            "description": "The client's `X-Request-Id` when it is 1-128 visible ASCII \
                characters, else a new UUID; it appears in the service log.",
            "required": true,
            "schema": {"type": "string", "minLength": 1},
        }),
    );
    if status == "503" {
        if let Some(h) = headers
            .get_mut("Retry-After")
            .and_then(Value::as_object_mut)
        {
            h.insert("required".to_owned(), Value::Bool(true));
        }
    }
}

/// The serialised document, built once.
pub fn document_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| serde_json::to_string_pretty(&document()).unwrap_or_default())
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document of this service.",
        content_type = "application/json", body = Object)),
)]
pub async fn openapi_json() -> Response {
    let mut r = document_text().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reservations::validation::{
        is_valid_email, is_valid_id, validate_idempotency_key, ReservationRequest,
        MAX_EVENT_ID_LEN, MAX_PER_RESERVATION, MAX_RESERVATION_ID_LEN, MAX_SEAT_ID_LEN,
    };

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        &doc["components"]["schemas"][name]
    }

    #[test]
    fn every_route_and_status_is_listed() {
        let doc = document();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let expect: &[(&str, &str, &[&str])] = &[
            ("/api/events", "get", &["200", "500", "503"]),
            (
                "/api/events/{eventId}",
                "get",
                &["200", "404", "500", "503"],
            ),
            (
                "/api/reservations",
                "post",
                &[
                    "201", "400", "402", "404", "409", "413", "422", "500", "503", "504",
                ],
            ),
            ("/api/reservations", "get", &["200", "422", "500", "503"]),
            (
                "/api/reservations/{id}",
                "get",
                &["200", "404", "500", "503"],
            ),
            (
                "/api/reservations/{id}/cancel",
                "post",
                &["200", "404", "409", "500", "503"],
            ),
            ("/health", "get", &["200", "503"]),
            ("/ready", "get", &["200", "503"]),
            ("/openapi.json", "get", &["200"]),
        ];
        for (path, method, statuses) in expect {
            let responses = doc["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path} missing"));
            let mut got: Vec<&str> = responses.keys().map(String::as_str).collect();
            got.sort_unstable();
            assert_eq!(&got, statuses, "{method} {path}");
            for (status, r) in responses {
                assert_eq!(r["headers"]["X-Request-Id"]["required"], true);
                if status == "503" {
                    assert_eq!(r["headers"]["Retry-After"]["required"], true, "{path}");
                }
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 20);
        for r in all {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            assert!(schema(&doc, name).is_object(), "{r} does not resolve");
        }
        // Links name existing operations, with the OpenAPI field names.
        let ops: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let mut links = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for r in op["responses"].as_object().unwrap().values() {
                    for link in r["links"].as_object().into_iter().flat_map(|l| l.values()) {
                        let target = link["operationId"].as_str().unwrap();
                        assert!(ops.contains(&target), "link to unknown {target}");
                        assert!(link.get("operation_id").is_none());
                        links += 1;
                    }
                }
            }
        }
        assert_eq!(links, 5);
        // The optional header is a string when sent, never JSON null.
        let params = &doc["paths"]["/api/reservations"]["post"]["parameters"];
        assert_eq!(params[0]["name"], "Idempotency-Key");
        assert_eq!(params[0]["required"], false);
        assert_eq!(
            params[0]["schema"]["$ref"],
            "#/components/schemas/IdempotencyKeyText"
        );
    }

    /// Strings near the edges of the rules: the validation's alphabet, a few characters it
    /// rejects, and lengths around the limits.
    fn candidates(seed: u64) -> Vec<String> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let alphabet: Vec<char> = "aZ09._-@@@..--!#'*+/=?^`~{}| \n\té\"".chars().collect();
        let mut out: Vec<String> = [
            "", "a", "a@b.c", "a@b", "@b.c", "a@.c", "a@b.c.", "a@-b.c", "a@b-.c", ".a@b.c",
            "a.@b.c", "a..b@c.d", "a@b..c", "a@b.-c", "EVT-001", "A1", "{k}", "k k", "a\n",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..20_000 {
            let len = match rng.random_range(0..10) {
                0 => rng.random_range(60..70),
                1 => rng.random_range(195..260),
                _ => rng.random_range(0..12),
            };
            out.push(
                (0..len)
                    .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                    .collect(),
            );
        }
        // local@domain from the characters that matter, to probe dots and dashes.
        let part = |rng: &mut rand::rngs::StdRng, chars: &[char], max: usize| -> String {
            let len = rng.random_range(1..=max);
            (0..len)
                .map(|_| chars[rng.random_range(0..chars.len())])
                .collect()
        };
        let local: Vec<char> = "a.+_-9".chars().collect();
        let domain: Vec<char> = "b.-Z".chars().collect();
        for _ in 0..5_000 {
            let l = part(&mut rng, &local, 6);
            let d = part(&mut rng, &domain, 6);
            out.push(format!("{l}@{d}"));
        }
        // Well-formed addresses with long parts, to reach the length limits.
        for n in [1usize, 32, 63, 64, 65, 200, 250] {
            out.push(format!("{}@b.c", "a".repeat(n)));
            out.push(format!("a@{}.c", "b".repeat(n)));
            out.push(format!("{}@{}.io", "a".repeat(64), "b".repeat(n)));
        }
        out
    }

    #[test]
    fn string_schemas_accept_exactly_what_the_validation_accepts() {
        let doc = document();
        let check = |name: &str, valid: &dyn Fn(&str) -> bool| {
            let s = schema(&doc, name);
            let re = regex::Regex::new(s["pattern"].as_str().unwrap()).unwrap();
            let max = s["maxLength"].as_u64().map_or(usize::MAX, |m| m as usize);
            let mut accepted = 0;
            for c in candidates(7) {
                let by_schema = re.is_match(&c) && c.chars().count() <= max;
                assert_eq!(by_schema, valid(&c), "{name}: {c:?}");
                accepted += usize::from(by_schema);
            }
            assert!(
                accepted > 20,
                "{name}: too few valid candidates ({accepted})"
            );
        };
        check("EventIdText", &|s| is_valid_id(s, MAX_EVENT_ID_LEN));
        check("SeatIdText", &|s| is_valid_id(s, MAX_SEAT_ID_LEN));
        check("ReservationIdText", &|s| {
            is_valid_id(s, MAX_RESERVATION_ID_LEN)
        });
        check("EmailText", &is_valid_email);
        check("IdempotencyKeyText", &|s| {
            validate_idempotency_key(s.as_bytes()).is_ok()
        });
    }

    #[test]
    fn request_examples_pass_the_validation() {
        let doc = document();
        let examples = &doc["paths"]["/api/reservations"]["post"]["requestBody"]["content"]
            ["application/json"]["examples"];
        let examples = examples.as_object().unwrap();
        assert_eq!(examples.len(), 3);
        for ex in examples.values() {
            ReservationRequest::from_json(&ex["value"]).unwrap();
        }
        for name in [
            "EventIdText",
            "SeatIdText",
            "EmailText",
            "IdempotencyKeyText",
        ] {
            let s = schema(&doc, name);
            let re = regex::Regex::new(s["pattern"].as_str().unwrap()).unwrap();
            assert!(re.is_match(s["examples"][0].as_str().unwrap()), "{name}");
        }
        let body = schema(&doc, "ReservationBody");
        assert_eq!(body["oneOf"].as_array().unwrap().len(), 3);
        let seats = schema(&doc, "SeatList");
        assert_eq!(seats["uniqueItems"], true);
        assert_eq!(seats["maxItems"], MAX_PER_RESERVATION);
    }

    #[test]
    fn error_body_is_what_api_error_writes() {
        let doc = document();
        let s = schema(&doc, "ErrorBody");
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(required.contains(&"error") && required.contains(&"message"));
        let body = crate::error::ApiError::invalid_request("amount", "x").body();
        assert_eq!(body["field"], "amount");
        assert_eq!(body["error"], "invalid_request");
    }
}
