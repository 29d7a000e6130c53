//! `GET /openapi.json` from the real running reservations service: it parses as OpenAPI 3.1,
//! lists every public path with every status its handler can answer, and real answers (success,
//! bad input, unknown ids, a wrong method, inventory and payments down) each have a documented
//! status, the documented headers and a body that conforms to the documented schema.

mod common;
mod reservations_support;

use reqwest::Method;
use serde_json::{json, Value};

use reservations_support::{seat_body, Answer, Stack};

/// The paths, methods and statuses the document must list, exactly.
const EXPECTED: &[(&str, &str, &[&str])] = &[
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

struct Doc(Value);

impl Doc {
    fn resolve<'a>(&'a self, mut schema: &'a Value) -> &'a Value {
        while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("unexpected $ref {r}"));
            schema = &self.0["components"]["schemas"][name];
            assert!(schema.is_object(), "{r} does not resolve");
        }
        schema
    }

    /// Validates `value` against `schema` (the JSON Schema keywords the document uses);
    /// returns the first mismatch.
    fn validate(&self, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
        let schema = self.resolve(schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.validate(s, value, at)?;
            }
        }
        if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
            let matching = one
                .iter()
                .filter(|s| self.validate(s, value, at).is_ok())
                .count();
            if matching != 1 {
                return Err(format!("{at}: {matching} oneOf branches match {value}"));
            }
        }
        if let Some(t) = schema.get("type") {
            let types: Vec<&str> = match t {
                Value::String(s) => vec![s.as_str()],
                Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            let ok = types.iter().any(|t| match *t {
                "string" => value.is_string(),
                "integer" => value.is_i64() || value.is_u64(),
                "number" => value.is_number(),
                "boolean" => value.is_boolean(),
                "array" => value.is_array(),
                "object" => value.is_object(),
                "null" => value.is_null(),
                _ => false,
            });
            if !ok {
                return Err(format!("{at}: {value} is not of type {t}"));
            }
        }
        if let Some(e) = schema.get("enum").and_then(Value::as_array) {
            if !e.contains(value) {
                return Err(format!("{at}: {value} not in {e:?}"));
            }
        }
        if let (Some(p), Some(s)) = (
            schema.get("pattern").and_then(Value::as_str),
            value.as_str(),
        ) {
            if !regex::Regex::new(p).unwrap().is_match(s) {
                return Err(format!("{at}: {s:?} does not match {p}"));
            }
        }
        if let Value::Object(obj) = value {
            for r in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    return Err(format!("{at}: required field {r} missing in {value}"));
                }
            }
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, s) in props {
                    if let Some(v) = obj.get(k) {
                        self.validate(s, v, &format!("{at}.{k}"))?;
                    }
                }
            }
        }
        if let (Some(items), Value::Array(a)) = (schema.get("items"), value) {
            for (i, v) in a.iter().enumerate() {
                self.validate(items, v, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Asserts that `answer` to `method template` is documented: its status is listed, its
    /// required headers are present, its content type is JSON and its body fits the schema.
    fn check(&self, method: &str, template: &str, answer: &Answer) {
        let status = answer.status.as_u16().to_string();
        let what = format!("{method} {template} -> {status} {}", answer.raw);
        let response =
            &self.0["paths"][template][method.to_ascii_lowercase()]["responses"][&status];
        assert!(response.is_object(), "undocumented: {what}");
        for (name, h) in response["headers"].as_object().into_iter().flatten() {
            if h["required"] == true {
                assert!(
                    answer.headers.contains_key(name.as_str()),
                    "header {name} missing: {what}"
                );
            }
        }
        let content_type = answer
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "content type {content_type:?}: {what}"
        );
        let schema = &response["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "no schema: {what}");
        if let Err(e) = self.validate(schema, &answer.body, "body") {
            panic!("{e}: {what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_lists_every_path_and_status_and_real_answers_conform() {
    let stack = Stack::start(&[]);
    let base = stack.res.url();

    // --- the document itself ---
    let a = stack.get(format!("{base}/openapi.json")).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.raw);
    let doc = Doc(a.body.clone());
    assert!(
        doc.0["openapi"].as_str().unwrap_or("").starts_with("3.1"),
        "not OpenAPI 3.1: {}",
        a.raw
    );
    doc.check("GET", "/openapi.json", &a);
    let paths = doc.0["paths"].as_object().expect("paths");
    for (path, method, statuses) in EXPECTED {
        let responses = doc.0["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        let mut got: Vec<&str> = responses.keys().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(&got, statuses, "{method} {path}");
        for (status, r) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                let body = doc.resolve(&r["content"]["application/json"]["schema"]);
                assert_eq!(
                    body["required"],
                    json!(["error", "message"]),
                    "{path} {status}"
                );
            }
            if status == "503" {
                assert_eq!(r["headers"]["Retry-After"]["required"], true, "{path}");
            }
        }
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        EXPECTED.len(),
        "unexpected operations in {paths:?}"
    );
    let post = &doc.0["paths"]["/api/reservations"]["post"];
    assert!(
        post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "Idempotency-Key header not documented"
    );

    // --- real answers conform ---
    let get = |path: String| {
        let url = format!("{base}{path}");
        let s = &stack;
        async move { s.get(url).await }
    };
    doc.check("GET", "/api/events", &get("/api/events".into()).await);
    doc.check(
        "GET",
        "/api/events/{eventId}",
        &get("/api/events/EVT-001".into()).await,
    );
    doc.check(
        "GET",
        "/api/events/{eventId}",
        &get("/api/events/EVT-002".into()).await,
    );
    let a = get("/api/events/NOPE".into()).await;
    assert_eq!(a.code(), "event_not_found");
    doc.check("GET", "/api/events/{eventId}", &a);
    // Not UTF-8 once percent-decoded: axum's own answer would be a plain-text 400.
    let a = get("/api/events/%FF%FE".into()).await;
    assert_eq!(a.code(), "event_not_found", "{}", a.raw);
    doc.check("GET", "/api/events/{eventId}", &a);

    let post_url = format!("{base}/api/reservations");
    let post = |body: Value, headers: &'static [(&'static str, &'static str)]| {
        let url = post_url.clone();
        let s = &stack;
        async move { s.send(Method::POST, url, Some(body), headers).await }
    };
    let created = post(seat_body("EVT-001", "A1", "oa@b.c", 50.0), &[]).await;
    assert_eq!(created.status.as_u16(), 201, "{}", created.raw);
    doc.check("POST", "/api/reservations", &created);
    let res_id = created.body["reservationId"].as_str().unwrap().to_owned();
    let a = post(seat_body("EVT-001", "A1", "ob@b.c", 50.0), &[]).await;
    assert_eq!(a.code(), "seat_unavailable");
    doc.check("POST", "/api/reservations", &a);
    let a = post(
        json!({"eventId":"EVT-002","quantity":2,"userEmail":"oa@b.c","amount":20.0}),
        &[],
    )
    .await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.raw);
    doc.check("POST", "/api/reservations", &a);
    let a = post(seat_body("EVT-NOPE", "A1", "oa@b.c", 5.0), &[]).await;
    assert_eq!(a.code(), "event_not_found");
    doc.check("POST", "/api/reservations", &a);
    let a = post(seat_body("EVT-001", "Z99", "oa@b.c", 5.0), &[]).await;
    assert_eq!(a.code(), "seat_not_found");
    doc.check("POST", "/api/reservations", &a);
    let a = post(seat_body("EVT-001", "A2", "oa@b.c", 20_000.0), &[]).await;
    assert_eq!(a.code(), "payment_declined");
    doc.check("POST", "/api/reservations", &a);
    let a = post(json!({"eventId": "EVT-001"}), &[]).await;
    assert_eq!(a.code(), "invalid_request");
    doc.check("POST", "/api/reservations", &a);
    let a = stack.send(Method::POST, post_url.clone(), None, &[]).await;
    assert_eq!(a.code(), "invalid_json");
    doc.check("POST", "/api/reservations", &a);
    let key: &'static [(&str, &str)] = &[("Idempotency-Key", "openapi-test-key")];
    let a = post(seat_body("EVT-001", "A3", "oa@b.c", 5.0), key).await;
    assert_eq!(a.status.as_u16(), 201, "{}", a.raw);
    let replay = post(seat_body("EVT-001", "A3", "oa@b.c", 5.0), key).await;
    assert_eq!(replay.body, a.body);
    doc.check("POST", "/api/reservations", &replay);
    let a = post(seat_body("EVT-001", "A4", "oa@b.c", 5.0), key).await;
    assert_eq!(a.code(), "idempotency_key_reused");
    doc.check("POST", "/api/reservations", &a);

    let a = get(format!("/api/reservations/{res_id}")).await;
    assert!(a.body["history"].is_array(), "{}", a.raw);
    doc.check("GET", "/api/reservations/{id}", &a);
    for id in ["nope", "%FF"] {
        let a = get(format!("/api/reservations/{id}")).await;
        assert_eq!(a.code(), "reservation_not_found", "{}", a.raw);
        doc.check("GET", "/api/reservations/{id}", &a);
    }
    let a = get("/api/reservations?userEmail=oa@b.c".into()).await;
    assert_eq!(a.body.as_array().map(Vec::len), Some(4), "{}", a.raw);
    doc.check("GET", "/api/reservations", &a);
    let a = get("/api/reservations?userEmail=not-an-email".into()).await;
    doc.check("GET", "/api/reservations", &a);
    let a = get("/api/reservations".into()).await;
    assert_eq!(a.body["field"], "userEmail");
    doc.check("GET", "/api/reservations", &a);

    let cancel = |id: String| {
        let url = format!("{base}/api/reservations/{id}/cancel");
        let s = &stack;
        async move { s.send(Method::POST, url, None, &[]).await }
    };
    let a = cancel(res_id.clone()).await;
    assert_eq!(a.body["status"], "CANCELLED", "{}", a.raw);
    doc.check("POST", "/api/reservations/{id}/cancel", &a);
    let a = cancel(res_id.clone()).await;
    assert_eq!(a.code(), "not_cancellable");
    doc.check("POST", "/api/reservations/{id}/cancel", &a);
    let a = cancel("nope".into()).await;
    assert_eq!(a.code(), "reservation_not_found");
    doc.check("POST", "/api/reservations/{id}/cancel", &a);

    doc.check("GET", "/health", &get("/health".into()).await);
    doc.check("GET", "/ready", &get("/ready".into()).await);

    // A wrong method gets the JSON 405 on every route, merged ones included.
    for path in [
        "/health",
        "/ready",
        "/openapi.json",
        "/api/events",
        "/metrics",
    ] {
        let a = stack
            .send(Method::DELETE, format!("{base}{path}"), None, &[])
            .await;
        assert_eq!(a.status.as_u16(), 405, "{path}");
        assert_eq!(a.code(), "method_not_allowed", "{path}: {:?}", a.raw);
        assert!(a.headers.contains_key("allow"), "{path}: no Allow header");
    }

    // Inventory down: documented 503s with Retry-After.
    stack.chaos(&base, json!({"inventoryDown": true})).await;
    let a = get(format!("/api/reservations/{res_id}")).await;
    assert_eq!(a.code(), "inventory_unavailable", "{}", a.raw);
    doc.check("GET", "/api/reservations/{id}", &a);
    let a = post(seat_body("EVT-001", "A5", "oa@b.c", 5.0), &[]).await;
    assert_eq!(a.code(), "inventory_unavailable", "{}", a.raw);
    doc.check("POST", "/api/reservations", &a);
    let a = get("/ready".into()).await;
    doc.check("GET", "/ready", &a);
    // The event list is served stale from the cache, flagged.
    let a = get("/api/events".into()).await;
    assert_eq!(a.status.as_u16(), 200, "{}", a.raw);
    assert_eq!(a.headers["x-data-stale"], "true");
    doc.check("GET", "/api/events", &a);
    stack.chaos_reset(&base).await;

    // Payments down: 503 payment_unavailable with Retry-After; the seat is released.
    let pay = stack.payments.url();
    stack.chaos(&pay, json!({"down": true})).await;
    let a = post(seat_body("EVT-001", "A6", "oa@b.c", 5.0), &[]).await;
    assert_eq!(a.code(), "payment_unavailable", "{}", a.raw);
    doc.check("POST", "/api/reservations", &a);
    stack.chaos_reset(&pay).await;

    // Chaos `down`: 503 service_down, documented too.
    stack.chaos(&base, json!({"down": true})).await;
    let a = get("/health".into()).await;
    assert_eq!(a.code(), "service_down");
    doc.check("GET", "/health", &a);
    // The document stays available.
    assert_eq!(get("/openapi.json".into()).await.status.as_u16(), 200);
    stack.chaos_reset(&base).await;

    stack.audit_ok("EVT-001").await;
}
