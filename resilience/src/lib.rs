//! Resilience primitives shared by the gateway and the backend, written once (ARCHITECTURE.md):
//!
//! - [`CircuitBreaker`]: closed → open when the failure rate over a sliding window reaches a
//!   threshold with enough calls; open for a fixed time; then half-open lets exactly one probe
//!   through, whose success closes and whose failure reopens.
//! - [`Bulkhead`]: at most N concurrent calls, up to Q more may wait a bounded time for a slot.
//!
//! No crate on crates.io implements the breaker the SPEC describes (rate over a time window with a
//! minimum call count, a single half-open probe, and "ignored" outcomes that must not count, such
//! as bulkhead overflow or a deliberate 503), so it is written here by hand.

mod breaker;
mod bulkhead;

pub use breaker::{BreakerConfig, BreakerOpen, BreakerPermit, BreakerState, CircuitBreaker};
pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadFull, BulkheadPermit};
