//! Real `redis-server` processes for the cluster-limit tests (SPEC §10.1), from the workspace's
//! shared harness.

#![allow(unused_imports)]

pub use redis_harness::*;
