//! Event reads (`GET /api/events`, `GET /api/events/{id}`) with a local in-process cache that
//! serves answers up to [`STALE_LIMIT`] old, marked stale, while the inventory store is
//! unreachable.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::keys;
use crate::slots::{Group, GROUPS};
use crate::store::{Store, StoreError};

/// Oldest cached answer served while Redis is unreachable.
pub const STALE_LIMIT: Duration = Duration::from_secs(60);
/// Most events whose detail is cached.
const MAX_CACHED_DETAILS: usize = 1000;

/// The values of `EventSummary.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Numbered seats: reserve with `seatId` or `seats`.
    Seats,
    /// General admission: reserve with `quantity`.
    Ga,
}

/// The values of `SeatView.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeatStatus {
    /// Free.
    Available,
    /// Held or payment pending.
    Held,
    /// Sold.
    Sold,
}

/// `GET /api/events` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventSummary {
    /// Event id.
    pub event_id: String,
    /// Display name.
    pub name: String,
    /// Total places.
    pub capacity: i64,
    /// Places free.
    pub available: i64,
    /// Places held or payment-pending.
    pub held: i64,
    /// Places sold.
    pub sold: i64,
    /// `seats` (numbered) or `ga` (general admission).
    #[schema(value_type = EventKind)]
    pub kind: String,
    /// True when served from the local cache because the store is unreachable (absent otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    #[schema(required = false)]
    pub stale: bool,
}

/// One seat of a numbered event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeatView {
    /// Seat id.
    pub seat_id: String,
    /// `available`, `held` or `sold`.
    #[schema(value_type = SeatStatus)]
    pub status: &'static str,
}

/// `GET /api/events/{id}` body.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct EventDetail {
    /// Counters.
    #[serde(flatten)]
    pub summary: EventSummary,
    /// Seats in their defined order (empty for general admission).
    pub seats: Vec<SeatView>,
}

/// Public status of a stored seat state.
pub fn seat_status(state: &str) -> &'static str {
    match state.as_bytes().first() {
        Some(b'A') => "available",
        Some(b'S') => "sold",
        _ => "held",
    }
}

/// A read answer and whether it came from the stale cache.
#[derive(Debug, Clone)]
pub struct Read<T> {
    /// The data.
    pub value: T,
    /// Served from cache while the store is unreachable.
    pub stale: bool,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No such event.
    #[error("event not found")]
    NotFound,
    /// Store unreachable and no fresh-enough cache.
    #[error("inventory store unavailable and no cached copy")]
    Unavailable(#[source] StoreError),
    /// Store answered with an error.
    #[error("inventory store error: {0}")]
    Store(#[source] StoreError),
}

/// Event reads with the stale cache.
#[derive(Debug, Default)]
pub struct EventReader {
    list: Mutex<Option<(Instant, Vec<EventSummary>)>>,
    details: Mutex<HashMap<String, (Instant, EventDetail)>>,
}

fn num(s: Option<&String>) -> i64 {
    s.and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn summary_from(event_id: &str, m: &HashMap<String, String>) -> EventSummary {
    EventSummary {
        event_id: event_id.to_owned(),
        name: m.get("name").cloned().unwrap_or_default(),
        capacity: num(m.get("capacity")),
        available: num(m.get("available")),
        held: num(m.get("held")),
        sold: num(m.get("sold")),
        kind: m.get("kind").cloned().unwrap_or_default(),
        stale: false,
    }
}

/// Unreachable, timed out or broken connection (as opposed to an error reply from Redis).
fn is_unreachable(e: &StoreError) -> bool {
    e.reply_message().is_none()
}

/// Reads every event's counters from Redis, sorted by id: per slot group (concurrently) its
/// event set, then its events' metadata in one pipeline (a pipeline stays in one slot).
pub async fn fetch_list(store: &Store) -> Result<Vec<EventSummary>, StoreError> {
    let groups = (0..GROUPS).map(|g| fetch_group(store, g));
    let mut all = Vec::new();
    for part in futures::future::join_all(groups).await {
        all.extend(part?);
    }
    all.sort_unstable_by(|a, b| a.event_id.cmp(&b.event_id));
    Ok(all)
}

/// The events of one slot group.
async fn fetch_group(store: &Store, g: Group) -> Result<Vec<EventSummary>, StoreError> {
    let ids: Vec<String> = store
        .query(redis::cmd("SMEMBERS").arg(keys::events(g)))
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = redis::pipe();
    for id in &ids {
        p.cmd("HGETALL").arg(keys::event_meta(id));
    }
    let metas: Vec<HashMap<String, String>> = store.pipeline(&p).await?;
    Ok(ids
        .iter()
        .zip(metas.iter())
        .filter(|(_, m)| !m.is_empty())
        .map(|(id, m)| summary_from(id, m))
        .collect())
}

/// Reads one event with its seats (one round trip). `Ok(None)` if unknown.
pub async fn fetch_detail(
    store: &Store,
    event_id: &str,
) -> Result<Option<EventDetail>, StoreError> {
    let mut p = redis::pipe();
    p.cmd("HGETALL")
        .arg(keys::event_meta(event_id))
        .cmd("HGETALL")
        .arg(keys::event_seats(event_id));
    let (meta, seats): (HashMap<String, String>, HashMap<String, String>) =
        store.pipeline(&p).await?;
    if meta.is_empty() {
        return Ok(None);
    }
    let order = meta.get("seatIds").cloned().unwrap_or_default();
    let seats = order
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|id| SeatView {
            seat_id: id.to_owned(),
            status: seats.get(id).map_or("held", |st| seat_status(st)),
        })
        .collect();
    Ok(Some(EventDetail {
        summary: summary_from(event_id, &meta),
        seats,
    }))
}

impl EventReader {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// All events, fresh, or from a cache ≤ 60 s old when the store is unreachable.
    pub async fn list(&self, store: &Store) -> Result<Read<Vec<EventSummary>>, ReadError> {
        match fetch_list(store).await {
            Ok(list) => {
                *self.list.lock() = Some((Instant::now(), list.clone()));
                Ok(Read {
                    value: list,
                    stale: false,
                })
            }
            Err(e) if is_unreachable(&e) => {
                let cached = self.list.lock().clone();
                match cached {
                    Some((at, mut list)) if at.elapsed() <= STALE_LIMIT => {
                        list.iter_mut().for_each(|s| s.stale = true);
                        Ok(Read {
                            value: list,
                            stale: true,
                        })
                    }
                    _ => Err(ReadError::Unavailable(e)),
                }
            }
            Err(e) => Err(ReadError::Store(e)),
        }
    }

    /// One event, fresh, or from a cache ≤ 60 s old when the store is unreachable.
    pub async fn detail(
        &self,
        store: &Store,
        event_id: &str,
    ) -> Result<Read<EventDetail>, ReadError> {
        match fetch_detail(store, event_id).await {
            Ok(Some(d)) => {
                let mut cache = self.details.lock();
                if cache.len() >= MAX_CACHED_DETAILS && !cache.contains_key(event_id) {
                    cache.retain(|_, (at, _)| at.elapsed() <= STALE_LIMIT);
                }
                if cache.len() < MAX_CACHED_DETAILS || cache.contains_key(event_id) {
                    cache.insert(event_id.to_owned(), (Instant::now(), d.clone()));
                }
                Ok(Read {
                    value: d,
                    stale: false,
                })
            }
            Ok(None) => {
                self.details.lock().remove(event_id);
                Err(ReadError::NotFound)
            }
            Err(e) if is_unreachable(&e) => {
                let cached = self.details.lock().get(event_id).cloned();
                match cached {
                    Some((at, mut d)) if at.elapsed() <= STALE_LIMIT => {
                        d.summary.stale = true;
                        Ok(Read {
                            value: d,
                            stale: true,
                        })
                    }
                    _ => Err(ReadError::Unavailable(e)),
                }
            }
            Err(e) => Err(ReadError::Store(e)),
        }
    }

    /// Refreshes the cache of the list and of every listed event (maintenance loop), so a stale
    /// copy exists even for events nobody has read yet.
    pub async fn refresh(&self, store: &Store) {
        if let Ok(r) = self.list(store).await {
            if r.stale {
                return;
            }
            for s in r.value.iter().take(100) {
                let _ = self.detail(store, &s.event_id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seat_states_map_to_public_status() {
        assert_eq!(seat_status("A"), "available");
        assert_eq!(seat_status("H|r|123"), "held");
        assert_eq!(seat_status("P|r"), "held");
        assert_eq!(seat_status("S|r"), "sold");
    }

    #[test]
    fn stale_flag_only_when_true() {
        let mut s = summary_from("E", &HashMap::new());
        assert!(serde_json::to_value(&s).unwrap().get("stale").is_none());
        s.stale = true;
        assert_eq!(serde_json::to_value(&s).unwrap()["stale"], true);
    }
}
