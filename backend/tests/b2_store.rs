//! The guarded Redis store against a real redis-server: normal use, Redis stopped (fail fast once
//! the breaker opened), Redis restarted (recovers by itself), chaos `inventoryDown`, Lua error
//! replies (not failures).
//!
//! Latency bounds are generous upper bounds for debug builds (SPEC asks < 50 ms when open; we
//! assert < 500 ms).

mod common;

use std::time::{Duration, Instant};

use backend::chaos::{Chaos, ChaosSettings};
use backend::store::{Store, StoreConfig, StoreError};
use common::RedisServer;
use resilience::BreakerState;

fn cfg() -> StoreConfig {
    StoreConfig {
        // Generous for a loaded CI machine; the bounds below scale with it.
        redis_timeout_ms: 500,
        redis_breaker_open_ms: 1_000,
        ..StoreConfig::default()
    }
}

const VALIDATING_SCRIPT: &str = r#"
if tonumber(ARGV[1]) == nil then
  return redis.error_reply('INVALID_NUMBER ' .. ARGV[1])
end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"#;

/// Retries `f` until it returns true or `limit` passes (bounded).
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_and_lua_error_reply_is_not_a_failure() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), cfg(), Chaos::new()).unwrap();
    let script = redis::Script::new(VALIDATING_SCRIPT);
    let keys = vec!["counter:{t}".to_owned()];

    let v: i64 = store
        .invoke_script(&script, &keys, &["5".to_owned()])
        .await
        .unwrap();
    assert_eq!(v, 5);
    let v: i64 = store
        .query(redis::cmd("GET").arg("counter:{t}"))
        .await
        .unwrap();
    assert_eq!(v, 5);
    let (a, b): (i64, i64) = store
        .pipeline(
            redis::pipe()
                .cmd("INCR")
                .arg("counter:{t}")
                .cmd("INCR")
                .arg("counter:{t}"),
        )
        .await
        .unwrap();
    assert_eq!((a, b), (6, 7));

    // Many validation errors in a row never open the breaker.
    for _ in 0..20 {
        let err = store
            .invoke_script::<i64>(&script, &keys, &["nope".to_owned()])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Redis(_)), "{err:?}");
        assert!(!err.outcome_unknown());
        let msg = err.reply_message().expect("error reply text");
        assert!(msg.contains("INVALID_NUMBER"), "{msg}");
    }
    assert_eq!(store.breaker_state(), BreakerState::Closed);
    assert!(store.is_available());
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_then_recovers_by_itself() {
    let mut redis = RedisServer::start();
    let store = Store::connect(&redis.url(), cfg(), Chaos::new()).unwrap();
    store.ping().await.unwrap();

    redis.stop();
    // Until the breaker opens each call is bounded by the timeout.
    for _ in 0..5 {
        let started = Instant::now();
        let err = store.ping().await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(1_500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            matches!(
                err,
                StoreError::Unavailable { .. } | StoreError::Timeout | StoreError::Redis(_)
            ),
            "{err:?}"
        );
    }
    assert_eq!(store.breaker_state(), BreakerState::Open);
    assert!(!store.is_available());
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, StoreError::Unavailable { retry_after_secs } if retry_after_secs >= 1),
        "{err:?}"
    );

    redis.restart();
    // No traffic needed: the store's monitor probes and closes the breaker by itself, within
    // the open period (1 s here) plus a few monitor ticks.
    let closed = eventually(Duration::from_secs(5), || {
        let store = store.clone();
        async move { store.breaker_state() == BreakerState::Closed }
    })
    .await;
    assert!(closed, "breaker did not close after redis came back");
    store.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_redis_times_out_within_bound() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), cfg(), Chaos::new()).unwrap();
    store.ping().await.unwrap();
    redis.freeze();
    let started = Instant::now();
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Timeout), "{err:?}");
    assert!(err.outcome_unknown());
    assert!(started.elapsed() < Duration::from_millis(1_000));
    redis.thaw();
    let recovered = eventually(Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.ping().await.is_ok() }
    })
    .await;
    assert!(recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_redis_is_down() {
    let port = common::free_port();
    let started = Instant::now();
    let store = Store::connect(&format!("redis://127.0.0.1:{port}/"), cfg(), Chaos::new()).unwrap();
    assert!(started.elapsed() < Duration::from_millis(200));
    let err = store.ping().await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(1_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_inventory_down_never_touches_redis() {
    let redis = RedisServer::start();
    let chaos = Chaos::new();
    let store = Store::connect(&redis.url(), cfg(), chaos.clone()).unwrap();
    store.ping().await.unwrap();
    chaos.set(ChaosSettings {
        inventory_down: true,
        ..ChaosSettings::default()
    });
    assert!(!store.is_available());
    let keys = vec!["k".to_owned()];
    let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
    for _ in 0..10 {
        let err = store
            .invoke_script::<i64>(&script, &keys, &[])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    }
    chaos.reset();
    // Nothing ran on the server, and chaos did not count as a breaker failure.
    let v: Option<i64> = store.query(redis::cmd("GET").arg("k")).await.unwrap();
    assert_eq!(v, None);
    assert_eq!(store.breaker_state(), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connection_blocks_longer_than_call_timeout() {
    let redis = RedisServer::start();
    let store = Store::connect(&redis.url(), cfg(), Chaos::new()).unwrap();
    let mut conn = store
        .dedicated_connection(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let started = Instant::now();
    let v: Option<Vec<String>> = redis::cmd("BLPOP")
        .arg("nothing")
        .arg(0.6)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, None);
    assert!(started.elapsed() >= Duration::from_millis(500));
}
