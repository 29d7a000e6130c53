//! Reservations that end without a sale (FAILED, EXPIRED, CANCELLED) expire after
//! `--unsold-reservation-ttl-secs`, so a flood of failed attempts does not grow Redis for ever;
//! CONFIRMED ones are the sales record and stay. The user index drops expired ids when listed.

mod common;
mod reservations_support;

use std::time::Duration;

use backend::reservations::keys;
use reqwest::StatusCode;

use reservations_support::{eventually, seat_body, Stack};

async fn redis_conn(stack: &Stack) -> redis::aio::MultiplexedConnection {
    redis::Client::open(stack.redis.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

async fn ttl(stack: &Stack, key: String) -> i64 {
    redis::cmd("TTL")
        .arg(key)
        .query_async(&mut redis_conn(stack).await)
        .await
        .expect("TTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsold_reservations_expire_and_leave_the_user_index_sold_ones_stay() {
    let stack = Stack::start(&["--unsold-reservation-ttl-secs", "1"]);
    let email = "keep@x.io";
    let declined = stack
        .reserve(seat_body("EVT-001", "E1", email, 20_000.0))
        .await;
    assert_eq!(
        declined.status,
        StatusCode::PAYMENT_REQUIRED,
        "{}",
        declined.raw
    );
    let sold = stack.reserve(seat_body("EVT-001", "E2", email, 20.0)).await;
    assert_eq!(sold.status, StatusCode::CREATED, "{}", sold.raw);
    let sold_id = sold.body["reservationId"].as_str().unwrap().to_owned();
    let list_url = format!("{}/api/reservations?userEmail={email}", stack.res.url());
    let listed = stack.get(list_url.clone()).await;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(2),
        "{}",
        listed.raw
    );
    let failed_id = listed.body[1]["reservationId"].as_str().unwrap().to_owned();
    assert_eq!(listed.body[1]["status"], "FAILED");

    assert!(ttl(&stack, keys::reservation(&failed_id)).await > 0);
    assert!(ttl(&stack, keys::history(&failed_id)).await > 0);
    assert_eq!(ttl(&stack, keys::reservation(&sold_id)).await, -1);

    let gone = eventually(Duration::from_secs(5), || async {
        let a = stack
            .get(format!("{}/api/reservations/{failed_id}", stack.res.url()))
            .await;
        (a.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    assert!(gone.is_some(), "the FAILED reservation never expired");
    let listed = stack.get(list_url.clone()).await;
    assert_eq!(
        listed.body.as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.raw
    );
    assert_eq!(listed.body[0]["reservationId"], sold_id.as_str());
    let indexed: i64 = redis::cmd("ZCARD")
        .arg(keys::user_index(
            keys::event_group("EVT-001"),
            &email.to_ascii_lowercase(),
        ))
        .query_async(&mut redis_conn(&stack).await)
        .await
        .expect("ZCARD");
    assert_eq!(indexed, 1, "the expired id stayed in the user index");

    // A cancelled sale is no longer a sale: it expires too, and the audit stays balanced.
    let cancel = stack
        .send(
            reqwest::Method::POST,
            format!("{}/api/reservations/{sold_id}/cancel", stack.res.url()),
            None,
            &[],
        )
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{}", cancel.raw);
    assert!(ttl(&stack, keys::reservation(&sold_id)).await > 0);
    let ev = stack.audit_ok("EVT-001").await;
    assert_eq!(ev["sold"], 0);
}
