//! No oversell under real concurrency: many tokio tasks with reqwest against the real
//! reservations process, real payments, real Redis (the scenarios are shared with the Redis
//! Cluster suite, `cluster_mode.rs`).

mod common;
mod reservations_support;

use std::sync::Arc;

use reservations_support::scenarios::{
    general_admission_sells_exactly_its_capacity, last_seat_race_has_exactly_one_winner,
    STORM_FLAGS,
};
use reservations_support::Stack;

/// Both storms share one stack and run one after the other, so the box is not asked to carry
/// 3,000 simultaneous requests at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_oversell_under_concurrent_buyers() {
    let stack = Arc::new(Stack::start(STORM_FLAGS));
    last_seat_race_has_exactly_one_winner(&stack).await;
    general_admission_sells_exactly_its_capacity(&stack).await;
}
