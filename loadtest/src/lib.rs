//! Load scenarios, demos and benchmarks against the running stack (SPEC §9).
//!
//! Each scenario of [`scenario`] sets up its own event on a reservations replica, injects one
//! fault (chaos endpoints, `docker compose stop`, or a killed process), measures what a client
//! sees, always restores, and returns a [`report::ScenarioReport`]: a list of checks with what was
//! expected, what was measured and a verdict. [`bench`] drives one service flat out and prints an
//! HDR latency histogram.

pub mod bench;
pub mod chart;
pub mod duration;
pub mod faults;
pub mod http;
pub mod limit_req;
pub mod load;
pub mod redis_nodes;
pub mod report;
pub mod resp;
pub mod scenario;
pub mod sources;
pub mod stack;
pub mod stats;
pub mod targets;
pub mod topology;
