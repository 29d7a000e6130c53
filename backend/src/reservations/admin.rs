//! Reservations admin: `PUT /admin/events/{eventId}` (create or reset an event) and
//! `GET /admin/audit` (the invariants of SPEC §5, checked for every event).

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

use super::keys;
use super::validation::{is_valid_id, MAX_EVENT_ID_LEN, MAX_SEAT_ID_LEN};
use crate::error::ApiError;
use crate::slots::GROUPS;
use crate::store::{Store, StoreError};

/// Largest general-admission capacity.
pub const MAX_CAPACITY: u64 = 1_000_000;
/// Most numbered seats per event.
pub const MAX_SEATS: usize = 10_000;

/// A validated `PUT /admin/events/{id}` body.
#[derive(Debug, Clone, PartialEq)]
pub struct EventDefinition {
    /// Display name.
    pub name: String,
    /// Capacity (number of seats for a numbered event).
    pub capacity: u64,
    /// Numbered seats, empty for general admission.
    pub seats: Vec<String>,
}

impl EventDefinition {
    /// Validates the body: `{"name", "capacity"}` or `{"name", "seats": [...]}`.
    pub fn from_json(event_id: &str, body: &Value) -> Result<Self, ApiError> {
        if !is_valid_id(event_id, MAX_EVENT_ID_LEN) {
            return Err(ApiError::invalid_request(
                "eventId",
                "eventId must be 1-64 characters of A-Z a-z 0-9 _ - .",
            ));
        }
        let Value::Object(obj) = body else {
            return Err(ApiError::invalid_request(
                "body",
                "body must be a JSON object {\"name\", \"capacity\"} or {\"name\", \"seats\"}",
            ));
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => s.clone(),
            _ => {
                return Err(ApiError::invalid_request(
                    "name",
                    "name must be a non-empty string of at most 200 bytes",
                ))
            }
        };
        let capacity = match obj.get("capacity") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(c) if (1..=MAX_CAPACITY).contains(&c) => Some(c),
                _ => {
                    return Err(ApiError::invalid_request(
                        "capacity",
                        format!("capacity must be an integer from 1 to {MAX_CAPACITY}"),
                    ))
                }
            },
        };
        let seats = match obj.get("seats") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_SEATS => {
                let mut seats = Vec::with_capacity(items.len());
                let mut seen = std::collections::HashSet::with_capacity(items.len());
                for item in items {
                    match item {
                        Value::String(s) if is_valid_id(s, MAX_SEAT_ID_LEN) => {
                            if !seen.insert(s.as_str()) {
                                return Err(ApiError::invalid_request(
                                    "seats",
                                    format!("seat {s} is listed twice"),
                                ));
                            }
                            seats.push(s.clone());
                        }
                        _ => {
                            return Err(ApiError::invalid_request(
                                "seats",
                                "each seat id must be 1-32 characters of A-Z a-z 0-9 _ - .",
                            ))
                        }
                    }
                }
                Some(seats)
            }
            Some(_) => {
                return Err(ApiError::invalid_request(
                    "seats",
                    format!("seats must be an array of 1 to {MAX_SEATS} seat ids"),
                ))
            }
        };
        match (capacity, seats) {
            (None, None) => Err(ApiError::invalid_request(
                "capacity",
                "either capacity (general admission) or seats (numbered) is required",
            )),
            (Some(c), None) => Ok(Self {
                name,
                capacity: c,
                seats: Vec::new(),
            }),
            (c, Some(seats)) => {
                if c.is_some_and(|c| c != seats.len() as u64) {
                    return Err(ApiError::invalid_request(
                        "capacity",
                        "capacity must equal the number of seats when both are given",
                    ));
                }
                Ok(Self {
                    name,
                    capacity: seats.len() as u64,
                    seats,
                })
            }
        }
    }
}

/// One event in the audit.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Event id.
    pub event_id: String,
    /// Capacity.
    pub capacity: i64,
    /// Counter: free.
    pub available: i64,
    /// Counter: held or payment-pending.
    pub held: i64,
    /// Counter: sold.
    pub sold: i64,
    /// Places of CONFIRMED reservations.
    pub confirmed_seats: i64,
    /// Number of CONFIRMED reservations.
    pub confirmed_reservations: usize,
}

/// `GET /admin/audit` body.
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    /// No violation.
    pub ok: bool,
    /// Per event.
    pub events: Vec<AuditEvent>,
    /// Human-readable violations.
    pub violations: Vec<String>,
}

fn num(m: &HashMap<String, String>, k: &str) -> i64 {
    m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Keys asked for per Redis call by the audit (the `COUNT` hint of a scan, the commands of one
/// pipeline): every call stays small and quick, whatever the size of an event.
pub const AUDIT_BATCH: usize = 500;

/// Most scan calls the audit makes over one key: an upper bound on the loop, far above what a
/// cursor needs (at [`AUDIT_BATCH`] a page, 200,000 pages cover 100 million members).
const MAX_SCAN_PAGES: usize = 200_000;

/// Which incremental scan to run over one key.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// `SSCAN`: members of a set.
    Set,
    /// `HSCAN`: field, value, field, value, ... of a hash.
    Hash,
}

/// Reads a whole set or hash with `SSCAN`/`HSCAN` cursors, [`AUDIT_BATCH`] a call, so no single
/// call blocks Redis for long. A scan may return an element more than once: callers dedupe.
/// Returns the flat items and whether the cursor finished within [`MAX_SCAN_PAGES`] calls.
async fn scan_all(store: &Store, scan: Scan, key: &str) -> Result<(Vec<String>, bool), StoreError> {
    let name = match scan {
        Scan::Set => "SSCAN",
        Scan::Hash => "HSCAN",
    };
    let mut items = Vec::new();
    let mut cursor = "0".to_owned();
    for _ in 0..MAX_SCAN_PAGES {
        let (next, page): (String, Vec<String>) = store
            .query(
                redis::cmd(name)
                    .arg(key)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(AUDIT_BATCH),
            )
            .await?;
        items.extend(page);
        if next == "0" {
            return Ok((items, true));
        }
        cursor = next;
    }
    Ok((items, false))
}

/// The members of a set, sorted and without duplicates.
async fn set_members(store: &Store, key: &str) -> Result<(Vec<String>, bool), StoreError> {
    let (mut members, complete) = scan_all(store, Scan::Set, key).await?;
    members.sort_unstable();
    members.dedup();
    Ok((members, complete))
}

/// The fields and values of a hash.
async fn hash_entries(
    store: &Store,
    key: &str,
) -> Result<(HashMap<String, String>, bool), StoreError> {
    let (flat, complete) = scan_all(store, Scan::Hash, key).await?;
    let mut map = HashMap::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(field), Some(value)) = (it.next(), it.next()) {
        map.insert(field, value);
    }
    Ok((map, complete))
}

/// `(status, quantity)` of each reservation, [`AUDIT_BATCH`] `HMGET`s per pipeline, in order.
async fn reservation_rows(
    store: &Store,
    ids: &[String],
) -> Result<Vec<(Option<String>, Option<String>)>, StoreError> {
    let mut rows = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(AUDIT_BATCH) {
        let mut p = redis::pipe();
        for r in chunk {
            p.cmd("HMGET")
                .arg(keys::reservation(r))
                .arg("status")
                .arg("quantity");
        }
        let batch: Vec<(Option<String>, Option<String>)> = store.pipeline(&p).await?;
        rows.extend(batch);
    }
    Ok(rows)
}

/// Checks, for every event: `available + held + sold == capacity`, counters ≥ 0, numbered seat
/// states agree with the counters, and `sold` equals the places of CONFIRMED reservations.
/// O(events + seats + confirmed reservations) in total, but every Redis call is O([`AUDIT_BATCH`])
/// (scan cursors and bounded pipelines), so a big event neither blocks Redis nor runs into the
/// store's per-call timeout. Not a snapshot: run it while the system is quiet to compare counters.
pub async fn audit(store: &Store) -> Result<Audit, StoreError> {
    let mut ids = Vec::new();
    let mut ids_complete = true;
    for g in 0..GROUPS {
        let (group_ids, complete) = set_members(store, &keys::events(g)).await?;
        ids.extend(group_ids);
        ids_complete &= complete;
    }
    ids.sort_unstable();
    let mut events = Vec::with_capacity(ids.len());
    let mut violations = Vec::new();
    if !ids_complete {
        violations.push(format!(
            "the event list scan did not finish within {MAX_SCAN_PAGES} calls"
        ));
    }
    for id in &ids {
        let meta: HashMap<String, String> = store
            .query(redis::cmd("HGETALL").arg(keys::event_meta(id)))
            .await?;
        if meta.is_empty() {
            violations.push(format!("{id}: listed but has no metadata"));
            continue;
        }
        let (capacity, available, held, sold) = (
            num(&meta, "capacity"),
            num(&meta, "available"),
            num(&meta, "held"),
            num(&meta, "sold"),
        );
        if available + held + sold != capacity {
            violations.push(format!(
                "{id}: available {available} + held {held} + sold {sold} != capacity {capacity}"
            ));
        }
        if available < 0 || held < 0 || sold < 0 {
            violations.push(format!("{id}: a counter is negative"));
        }
        if meta.get("kind").map(String::as_str) == Some("seats") {
            let (seats, complete) = hash_entries(store, &keys::event_seats(id)).await?;
            if !complete {
                violations.push(format!(
                    "{id}: the seat scan did not finish within {MAX_SCAN_PAGES} calls"
                ));
            }
            let (mut a, mut h, mut s) = (0i64, 0i64, 0i64);
            for st in seats.values() {
                match st.as_bytes().first() {
                    Some(b'A') => a += 1,
                    Some(b'S') => s += 1,
                    _ => h += 1,
                }
            }
            if (a, h, s) != (available, held, sold) || seats.len() as i64 != capacity {
                violations.push(format!(
                    "{id}: seat states (available {a}, held {h}, sold {s}) disagree with counters"
                ));
            }
        }
        let (confirmed, complete) = set_members(store, &keys::event_confirmed(id)).await?;
        if !complete {
            violations.push(format!(
                "{id}: the confirmed reservations scan did not finish within {MAX_SCAN_PAGES} calls"
            ));
        }
        let mut confirmed_seats = 0i64;
        let rows = reservation_rows(store, &confirmed).await?;
        for (r, (status, qty)) in confirmed.iter().zip(rows) {
            if status.as_deref() != Some("CONFIRMED") {
                violations.push(format!(
                    "{id}: reservation {r} is listed as confirmed but is {}",
                    status.as_deref().unwrap_or("missing")
                ));
            }
            confirmed_seats += qty.and_then(|q| q.parse::<i64>().ok()).unwrap_or(0);
        }
        if confirmed_seats != sold {
            violations.push(format!(
                "{id}: sold {sold} != seats of CONFIRMED reservations {confirmed_seats}"
            ));
        }
        events.push(AuditEvent {
            event_id: id.clone(),
            capacity,
            available,
            held,
            sold,
            confirmed_seats,
            confirmed_reservations: confirmed.len(),
        });
    }
    Ok(Audit {
        ok: violations.is_empty(),
        events,
        violations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_definitions() {
        let d = EventDefinition::from_json("E1", &json!({"name":"x","capacity":5})).unwrap();
        assert_eq!((d.capacity, d.seats.len()), (5, 0));
        let d = EventDefinition::from_json("E1", &json!({"name":"x","seats":["A","B"]})).unwrap();
        assert_eq!(d.capacity, 2);
        let field = |id: &str, v: Value| {
            EventDefinition::from_json(id, &v).unwrap_err().extra["field"].clone()
        };
        assert_eq!(field("E1", json!({"capacity":5})), "name");
        assert_eq!(field("E1", json!({"name":"x"})), "capacity");
        assert_eq!(field("E1", json!({"name":"x","capacity":0})), "capacity");
        assert_eq!(field("E1", json!({"name":"x","seats":["A","A"]})), "seats");
        assert_eq!(field("E{1}", json!({"name":"x","capacity":1})), "eventId");
        assert_eq!(
            field("E1", json!({"name":"x","capacity":3,"seats":["A"]})),
            "capacity"
        );
    }
}
