//! Pingora reverse-proxy gateway: NGINX-exact `limit_req`, `limit_conn`, bulkheads, timeouts,
//! active and passive health ejection, and circuit breaking (SPEC §7).
//!
//! One request's path, in order (each step in its own module; `proxy.rs` strings them together):
//! [`client`] (client IP, header deadline, body limit) → [`route`] → [`admission`] over
//! [`limit`] (limit_req, limit_conn) → [`upstream`] (bulkhead, breaker, selection) → [`forward`]
//! (the fields added upstream) → Pingora → outcome → [`metrics`] and [`access_log`]. [`respond`]
//! writes every local answer; [`state`] and [`reload`] hold and swap the configuration; [`admin`]
//! serves `/metrics`, `/status` and `/`.

pub mod access_log;
pub mod admin;
pub mod admission;
pub mod cli;
pub mod client;
pub mod config;
pub mod fd_limit;
pub mod forward;
pub mod limit;
pub mod log_buffer;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod state;
pub mod upstream;
