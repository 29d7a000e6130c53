//! Request limits: NGINX-exact `limit_req` and `limit_conn` (SPEC §7).
//!
//! Per request, for each limit of the route: [`resolve_key`] with the zone's [`req::ReqZone::key_spec`]
//! (`None` → the request is not counted in that zone), then one [`req::check`] over all
//! `limit_req` limits (it decides pass / delay / reject and accounts atomically), then
//! [`conn::ConnZone::try_acquire`] per `limit_conn` limit (keep the permits in the request context).
//! [`Zones`] holds the live zones and carries their state across reloads.

pub mod conn;
pub mod headers;
pub mod key;
mod lru;
pub mod req;
pub mod store;
pub mod zones;

pub use conn::{ConnPermit, ConnRejected, ConnZone};
pub use headers::RateLimitHeaders;
pub use key::{resolve_key, LimitKeyValue};
pub use req::{check, now, peek, ReqCheck, ReqDecision, ReqZone};
pub use store::{LimitStore, StoreError};
pub use zones::{rate_notation, ConnZoneStatus, ReqZoneStatus, Zones, ZonesStatus};
