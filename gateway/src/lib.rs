//! Pingora reverse-proxy gateway: NGINX-exact `limit_req`, `limit_conn`, bulkheads, timeouts,
//! active and passive health ejection, and circuit breaking (SPEC §7).

pub mod config;
pub mod limit;
pub mod upstream;
