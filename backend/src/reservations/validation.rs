//! Validation of `POST /api/reservations` bodies and of identifiers, turning untrusted JSON into a
//! typed [`ReservationRequest`] or a 422 `invalid_request` naming the field.

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{PartialSchema, ToSchema};

use crate::error::ApiError;

/// Most seats (or general-admission tickets) one reservation may take.
pub const MAX_PER_RESERVATION: usize = 10;
/// Longest event id.
pub const MAX_EVENT_ID_LEN: usize = 64;
/// Longest seat id.
pub const MAX_SEAT_ID_LEN: usize = 32;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Longest e-mail address (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest reservation id accepted in a path.
pub const MAX_RESERVATION_ID_LEN: usize = 64;

// --- The wire format, for the OpenAPI document -------------------------------------------------
//
// `POST /api/reservations` bodies are validated by hand ([`ReservationRequest::from_json`]) so that
// every mistake gets its own `invalid_request` naming the field; the types below only describe,
// for `GET /openapi.json`, exactly what that validation accepts. The schemas of the string types
// are written out (not derived) so that they are built from the limits above.

/// A string schema for the OpenAPI document.
fn string_schema(
    description: &str,
    pattern: String,
    max_length: Option<usize>,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .max_length(max_length)
        .examples([Value::from(example)])
        .into()
}

/// The characters of an identifier, as a regular-expression class (see [`is_valid_id`]).
const ID_CLASS: &str = "[A-Za-z0-9_.-]";

/// Declares a documented string newtype whose schema is `$schema`.
macro_rules! documented_string {
    ($(#[$meta:meta])* $name:ident => $schema:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        pub struct $name(pub String);

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl ToSchema for $name {}
    };
}

documented_string!(
    /// An event id (see [`is_valid_id`]).
    EventIdText => string_schema(
        "An event id: 1-64 characters of `A-Z a-z 0-9 _ - .`.",
        format!("^{ID_CLASS}{{1,{MAX_EVENT_ID_LEN}}}$"),
        None,
        "EVT-001",
    )
);

documented_string!(
    /// A seat id (see [`is_valid_id`]).
    SeatIdText => string_schema(
        "A seat id: 1-32 characters of `A-Z a-z 0-9 _ - .`.",
        format!("^{ID_CLASS}{{1,{MAX_SEAT_ID_LEN}}}$"),
        None,
        "A1",
    )
);

documented_string!(
    /// A reservation id (see [`is_valid_id`]).
    ReservationIdText => string_schema(
        "A reservation id: 1-64 characters of `A-Z a-z 0-9 _ - .` (the service makes 32 hex \
         digits).",
        format!("^{ID_CLASS}{{1,{MAX_RESERVATION_ID_LEN}}}$"),
        None,
        "0f8c2b6e4d8a4e53a7b0c6f1e2d3a4b5",
    )
);

/// Local-part characters of an e-mail address other than `.` (see [`is_valid_email`]).
const EMAIL_LOCAL_CLASS: &str = "[A-Za-z0-9!#$%&'*+/=?^_`~-]";
/// The domain of an e-mail address: dot-separated non-empty runs of letters, digits and `-`,
/// at least two, starting and ending with a letter or digit (see [`is_valid_email`]).
const EMAIL_DOMAIN: &str = "[A-Za-z0-9][A-Za-z0-9-]*([.][A-Za-z0-9-]+)*[.][A-Za-z0-9-]*[A-Za-z0-9]";

documented_string!(
    /// An e-mail address (see [`is_valid_email`]).
    EmailText => string_schema(
        "An e-mail address `local@domain`: at most 254 ASCII characters; the local part 1-64 \
         characters, not starting or ending with `.`; the domain of letters, digits, `-` and \
         `.`, with at least one `.`, no `..`, not starting or ending with `.` or `-`.",
        format!(
            "^{l}(([.]|{l}){{0,62}}{l})?@{d}$",
            l = EMAIL_LOCAL_CLASS,
            d = EMAIL_DOMAIN
        ),
        Some(MAX_EMAIL_LEN),
        "a@b.c",
    )
);

documented_string!(
    /// An `Idempotency-Key` header value (see [`validate_idempotency_key`]).
    IdempotencyKeyText => string_schema(
        "An `Idempotency-Key`: 1-200 visible ASCII characters except `{` and `}`.",
        format!("^[!-z|~]{{1,{MAX_IDEMPOTENCY_KEY_LEN}}}$"),
        None,
        "order-7f3a",
    )
);

/// The `seats` of a reservation: 1 to 10 distinct seat ids.
#[derive(Debug, Clone, Deserialize)]
pub struct SeatList(pub Vec<SeatIdText>);

impl PartialSchema for SeatList {
    fn schema() -> RefOr<Schema> {
        ArrayBuilder::new()
            .items(RefOr::Ref(Ref::from_schema_name(SeatIdText::name())))
            .min_items(Some(1))
            .max_items(Some(MAX_PER_RESERVATION))
            .unique_items(true)
            .description(Some("1 to 10 distinct seat ids, reserved all or none."))
            .examples([serde_json::json!(["B1", "B2"])])
            .into()
    }
}

impl ToSchema for SeatList {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((SeatIdText::name().into_owned(), SeatIdText::schema()));
    }
}

/// A field that must be absent or `null` in this form of the body: `seatId`, `seats` and
/// `quantity` exclude each other.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Absent;

impl PartialSchema for Absent {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Null)
            .description(Some(
                "Absent or null: only one of `seatId`, `seats` and `quantity` may be given.",
            ))
            .into()
    }
}

impl ToSchema for Absent {}

/// `POST /api/reservations` for one numbered seat.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(title = "One seat")]
pub struct SeatIdBody {
    /// A numbered-seat event.
    pub event_id: EventIdText,
    /// The seat.
    pub seat_id: SeatIdText,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub seats: Option<Absent>,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub quantity: Option<Absent>,
    /// The buyer.
    pub user_email: EmailText,
    /// Price, greater than 0 (over 10000 is declined by payments).
    #[schema(exclusive_minimum = 0, example = 50.0)]
    pub amount: f64,
}

/// `POST /api/reservations` for several numbered seats, all or none.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(title = "Several seats")]
pub struct SeatsBody {
    /// A numbered-seat event.
    pub event_id: EventIdText,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub seat_id: Option<Absent>,
    /// The seats.
    pub seats: SeatList,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub quantity: Option<Absent>,
    /// The buyer.
    pub user_email: EmailText,
    /// Price, greater than 0 (over 10000 is declined by payments).
    #[schema(exclusive_minimum = 0, example = 50.0)]
    pub amount: f64,
}

/// `POST /api/reservations` for general-admission tickets.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(title = "General admission")]
pub struct QuantityBody {
    /// A general-admission event.
    pub event_id: EventIdText,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub seat_id: Option<Absent>,
    /// Must be absent or null.
    #[serde(default)]
    #[schema(nullable = false)]
    pub seats: Option<Absent>,
    /// 1 to 10 tickets.
    #[schema(minimum = 1, maximum = 10, example = 2)]
    pub quantity: u32,
    /// The buyer.
    pub user_email: EmailText,
    /// Price, greater than 0 (over 10000 is declined by payments).
    #[schema(exclusive_minimum = 0, example = 50.0)]
    pub amount: f64,
}

/// The body of `POST /api/reservations`: `eventId`, `userEmail`, `amount` and exactly one of
/// `seatId`, `seats` or `quantity`. Other fields are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ReservationBody {
    /// One numbered seat.
    Seat(SeatIdBody),
    /// Several numbered seats.
    Seats(SeatsBody),
    /// General-admission tickets.
    Quantity(QuantityBody),
}

/// What is being reserved.
#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    /// Numbered seats (from `seatId` or `seats`), distinct, in request order.
    Seats(Vec<String>),
    /// General-admission tickets (`quantity`).
    Quantity(u32),
}

impl Selection {
    /// Number of places taken.
    pub fn count(&self) -> usize {
        match self {
            Selection::Seats(s) => s.len(),
            Selection::Quantity(q) => *q as usize,
        }
    }
}

/// A validated reservation request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationRequest {
    /// Event id (validated charset).
    pub event_id: String,
    /// Seats or quantity.
    pub selection: Selection,
    /// Buyer e-mail, as sent.
    pub user_email: String,
    /// Price, finite and positive.
    pub amount: f64,
}

impl ReservationRequest {
    /// Validates a parsed JSON body. Unknown fields are ignored.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let Value::Object(obj) = body else {
            return Err(ApiError::invalid_request(
                "body",
                "body must be a JSON object like {\"eventId\":\"EVT-001\",\"seatId\":\"A1\",\"userEmail\":\"a@b.c\",\"amount\":50.0}",
            ));
        };
        let event_id = match obj.get("eventId") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_request("eventId", "eventId is required"))
            }
            Some(Value::String(s)) if is_valid_id(s, MAX_EVENT_ID_LEN) => s.clone(),
            Some(Value::String(_)) => {
                return Err(ApiError::invalid_request(
                    "eventId",
                    "eventId must be 1-64 characters of A-Z a-z 0-9 _ - .",
                ))
            }
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "eventId",
                    "eventId must be a string",
                ))
            }
        };
        let present = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
        let chosen: Vec<&str> = ["seatId", "seats", "quantity"]
            .into_iter()
            .filter(|k| present(k))
            .collect();
        let selection = match chosen.as_slice() {
            [] => {
                return Err(ApiError::invalid_request(
                    "seatId",
                    "one of seatId, seats or quantity is required",
                ))
            }
            [one] => parse_selection(one, &obj[*one])?,
            [first, second, ..] => {
                return Err(ApiError::invalid_request(
                    second,
                    format!("{first} and {second} are mutually exclusive: send only one"),
                ))
            }
        };
        let user_email = match obj.get("userEmail") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_request(
                    "userEmail",
                    "userEmail is required",
                ))
            }
            Some(Value::String(s)) if is_valid_email(s) => s.clone(),
            Some(Value::String(_)) => {
                return Err(ApiError::invalid_request(
                    "userEmail",
                    "userEmail must be a valid e-mail address like a@b.c",
                ))
            }
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "userEmail",
                    "userEmail must be a string",
                ))
            }
        };
        let amount = match obj.get("amount") {
            None | Some(Value::Null) => {
                return Err(ApiError::invalid_request("amount", "amount is required"))
            }
            Some(Value::Number(n)) => match n.as_f64() {
                Some(a) if a.is_finite() && a > 0.0 => a,
                _ => {
                    return Err(ApiError::invalid_request(
                        "amount",
                        "amount must be a finite number greater than 0",
                    ))
                }
            },
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "amount",
                    "amount must be a number",
                ))
            }
        };
        Ok(Self {
            event_id,
            selection,
            user_email,
            amount,
        })
    }

    /// A digest of the normalised request: equal for the same reservation asked twice (seat order
    /// and JSON formatting do not matter), different otherwise. Used for `Idempotency-Key`.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.event_id.as_bytes());
        h.update(b"\n");
        match &self.selection {
            Selection::Seats(seats) => {
                let mut sorted: Vec<&str> = seats.iter().map(String::as_str).collect();
                sorted.sort_unstable();
                h.update(b"seats:");
                h.update(sorted.join(",").as_bytes());
            }
            Selection::Quantity(q) => {
                h.update(b"quantity:");
                h.update(q.to_string().as_bytes());
            }
        }
        h.update(b"\n");
        h.update(self.user_email.as_bytes());
        h.update(b"\n");
        h.update(self.amount.to_bits().to_be_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

fn parse_selection(field: &str, v: &Value) -> Result<Selection, ApiError> {
    match field {
        "seatId" => match v {
            Value::String(s) if is_valid_id(s, MAX_SEAT_ID_LEN) => {
                Ok(Selection::Seats(vec![s.clone()]))
            }
            Value::String(_) => Err(ApiError::invalid_request(
                "seatId",
                "seatId must be 1-32 characters of A-Z a-z 0-9 _ - .",
            )),
            _ => Err(ApiError::invalid_request(
                "seatId",
                "seatId must be a string",
            )),
        },
        "seats" => {
            let Value::Array(items) = v else {
                return Err(ApiError::invalid_request(
                    "seats",
                    "seats must be an array of seat ids",
                ));
            };
            if items.is_empty() || items.len() > MAX_PER_RESERVATION {
                return Err(ApiError::invalid_request(
                    "seats",
                    format!("seats must list 1 to {MAX_PER_RESERVATION} seat ids"),
                ));
            }
            let mut seats: Vec<String> = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(s) = item else {
                    return Err(ApiError::invalid_request(
                        "seats",
                        "seats must contain only strings",
                    ));
                };
                if !is_valid_id(s, MAX_SEAT_ID_LEN) {
                    return Err(ApiError::invalid_request(
                        "seats",
                        "each seat id must be 1-32 characters of A-Z a-z 0-9 _ - .",
                    ));
                }
                if seats.contains(s) {
                    return Err(ApiError::invalid_request(
                        "seats",
                        format!("seat {s} is listed twice"),
                    ));
                }
                seats.push(s.clone());
            }
            Ok(Selection::Seats(seats))
        }
        _ => {
            let max = MAX_PER_RESERVATION as u64;
            // An integral number such as 2.0 is an integer too (JSON Schema, as documented).
            let integral = v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && (1.0..=max as f64).contains(f))
                    .map(|f| f as u64)
            });
            match integral {
                Some(q) if (1..=max).contains(&q) => Ok(Selection::Quantity(q as u32)),
                _ => Err(ApiError::invalid_request(
                    "quantity",
                    format!("quantity must be an integer from 1 to {max}"),
                )),
            }
        }
    }
}

/// An identifier (event, seat, reservation): 1..=`max` characters of `A-Z a-z 0-9 _ - .`.
pub fn is_valid_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// A pragmatic e-mail check: `local@domain.tld`, ASCII, no whitespace, no braces.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() < 5 || s.len() > MAX_EMAIL_LEN {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`~.-".contains(&b));
    let domain_ok = domain.contains('.')
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    local_ok && domain_ok
}

/// Validates an `Idempotency-Key` header value: 1..=200 visible ASCII characters without braces.
pub fn validate_idempotency_key(raw: &[u8]) -> Result<String, ApiError> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_IDEMPOTENCY_KEY_LEN
        && raw
            .iter()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'{' | b'}'));
    if !ok {
        return Err(ApiError::invalid_request(
            "Idempotency-Key",
            "Idempotency-Key must be 1-200 visible ASCII characters without braces",
        ));
    }
    Ok(String::from_utf8_lossy(raw).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(v: Value) -> String {
        let e = ReservationRequest::from_json(&v).unwrap_err();
        assert_eq!(e.code, "invalid_request");
        e.extra["field"].as_str().unwrap().to_owned()
    }

    #[test]
    fn accepts_the_three_shapes() {
        let r = ReservationRequest::from_json(
            &json!({"eventId":"EVT-001","seatId":"A1","userEmail":"a@b.c","amount":50.0}),
        )
        .unwrap();
        assert_eq!(r.selection, Selection::Seats(vec!["A1".into()]));
        let r = ReservationRequest::from_json(
            &json!({"eventId":"EVT-001","seats":["A1","A2"],"userEmail":"a@b.c","amount":5}),
        )
        .unwrap();
        assert_eq!(r.selection.count(), 2);
        let r = ReservationRequest::from_json(
            &json!({"eventId":"EVT-002","quantity":3,"userEmail":"a@b.c","amount":5}),
        )
        .unwrap();
        assert_eq!(r.selection, Selection::Quantity(3));
        let r = ReservationRequest::from_json(
            &json!({"eventId":"EVT-002","quantity":3.0,"userEmail":"a@b.c","amount":5}),
        )
        .unwrap();
        assert_eq!(r.selection, Selection::Quantity(3));
    }

    #[test]
    fn names_the_bad_field() {
        let base = json!({"eventId":"EVT-001","seatId":"A1","userEmail":"a@b.c","amount":50.0});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert_eq!(field_of(json!([1, 2])), "body");
        assert_eq!(field_of(with("eventId", json!(5))), "eventId");
        assert_eq!(field_of(with("eventId", json!(""))), "eventId");
        assert_eq!(field_of(with("userEmail", json!(""))), "userEmail");
        assert_eq!(field_of(with("userEmail", json!("nope"))), "userEmail");
        assert_eq!(field_of(with("amount", json!(0))), "amount");
        assert_eq!(field_of(with("amount", json!(-3.5))), "amount");
        assert_eq!(field_of(with("amount", json!("5"))), "amount");
        assert_eq!(field_of(with("quantity", json!(2))), "quantity");
        assert_eq!(field_of(with("seats", json!(["A1"]))), "seats");
        assert_eq!(field_of(with("seatId", json!(3))), "seatId");
        let mut no_sel = base.clone();
        no_sel.as_object_mut().unwrap().remove("seatId");
        assert_eq!(field_of(no_sel.clone()), "seatId");
        let q = |v: Value| {
            let mut b = no_sel.clone();
            b["quantity"] = v;
            b
        };
        assert_eq!(field_of(q(json!(0))), "quantity");
        assert_eq!(field_of(q(json!(11))), "quantity");
        assert_eq!(field_of(q(json!(1.5))), "quantity");
        assert_eq!(field_of(q(json!(11.0))), "quantity");
        assert_eq!(field_of(q(json!(0.0))), "quantity");
        assert_eq!(field_of(q(json!(-1))), "quantity");
        let s = |v: Value| {
            let mut b = no_sel.clone();
            b["seats"] = v;
            b
        };
        assert_eq!(field_of(s(json!(["A1", "A1"]))), "seats");
        assert_eq!(field_of(s(json!([]))), "seats");
        assert_eq!(field_of(s(json!("A1"))), "seats");
    }

    #[test]
    fn fingerprint_ignores_seat_order_but_not_content() {
        let a = ReservationRequest::from_json(
            &json!({"eventId":"E","seats":["A1","A2"],"userEmail":"a@b.c","amount":5}),
        )
        .unwrap();
        let b = ReservationRequest::from_json(
            &json!({"amount":5.0,"userEmail":"a@b.c","seats":["A2","A1"],"eventId":"E"}),
        )
        .unwrap();
        let c = ReservationRequest::from_json(
            &json!({"eventId":"E","seats":["A1","A2"],"userEmail":"a@b.c","amount":6}),
        )
        .unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn emails() {
        for ok in ["a@b.c", "first.last+tag@example.co.uk"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "", "a@b", "@b.c", "a@.c", "a b@c.d", "a@b..c", "a{x}@b.c", "a@b.c.",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn idempotency_keys() {
        assert!(validate_idempotency_key(b"abc-123").is_ok());
        assert!(validate_idempotency_key(b"").is_err());
        assert!(validate_idempotency_key(b"a b").is_err());
        assert!(validate_idempotency_key(b"{x}").is_err());
    }
}
