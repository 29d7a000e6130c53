//! The seat inventory and saga state in Redis, changed only by the Lua scripts in this directory
//! (each validates everything before writing and is O(seats requested)). This module gives each
//! script a typed wrapper; key layout is in [`super::keys`], seat states in `prelude.lua`.

use redis::Script;

use super::keys;
use crate::store::{Store, StoreError};

macro_rules! lua {
    ($file:literal) => {
        Script::new(concat!(include_str!("prelude.lua"), include_str!($file)))
    };
}

/// How long an idempotency record is kept (24 h).
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;

/// The loaded scripts (SHA computed once).
#[derive(Debug)]
struct Scripts {
    hold: Script,
    begin_payment: Script,
    confirm: Script,
    release: Script,
    cancel_begin: Script,
    cancel: Script,
    renew_lease: Script,
    reset_event: Script,
    seed_demo: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            hold: lua!("hold.lua"),
            begin_payment: lua!("begin_payment.lua"),
            confirm: lua!("confirm.lua"),
            release: lua!("release.lua"),
            cancel_begin: lua!("cancel_begin.lua"),
            cancel: lua!("cancel.lua"),
            renew_lease: lua!("renew_lease.lua"),
            reset_event: lua!("reset_event.lua"),
            seed_demo: lua!("seed_demo.lua"),
        }
    }
}

/// What to hold.
#[derive(Debug, Clone)]
pub struct HoldRequest<'a> {
    /// New reservation id.
    pub res_id: &'a str,
    /// Event id.
    pub event_id: &'a str,
    /// Numbered seats, or empty for general admission.
    pub seats: &'a [String],
    /// General-admission quantity (ignored for seats).
    pub quantity: u32,
    /// Price as sent.
    pub amount: f64,
    /// Buyer e-mail.
    pub user_email: &'a str,
    /// Idempotency key and request fingerprint, if the client sent a key.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// A stored idempotency record (see `hold.lua`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    /// `running` or `done`.
    pub state: String,
    /// Reservation created by the first request (empty if it failed before creating one).
    pub res_id: String,
    /// Error code of a failed first request.
    pub err: String,
    /// Detail (seat id...) of that error.
    pub detail: String,
    /// Stored HTTP status of a successful first request.
    pub status: String,
    /// Stored body of a successful first request.
    pub body: String,
}

/// Result of the hold script.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldOutcome {
    /// Seats held, saga created (status HELD).
    Held,
    /// Refused; nothing written (except the idempotency record of the refusal).
    Rejected {
        /// e.g. `seat_unavailable`, `sold_out`, `event_not_found`, `seat_not_found`, `wrong_kind`.
        code: String,
        /// The seat or event concerned.
        detail: String,
    },
    /// A requested seat is blocked by this expired, not yet swept hold.
    BlockedByExpired(String),
    /// Same key, other body.
    IdempotencyReused,
    /// Same key and body seen before.
    Replay(IdempotencyRecord),
}

/// Result of a saga transition script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The transition happened. For `release`, the number of places returned to stock.
    Done(u32),
    /// No such reservation.
    Missing,
    /// The reservation is not in the expected state (its current status is given, with the
    /// payment id when the script reports it).
    WrongState(String, String),
    /// The hold passed its deadline before the transition.
    Expired,
    /// The reservation's seats are no longer its own (the event was reset).
    Lost,
    /// Sweeper: the hold has not expired yet.
    NotExpired,
    /// Someone else holds the saga lease.
    Busy,
}

fn parse_step(reply: Vec<String>) -> Step {
    let tag = reply.first().map(String::as_str).unwrap_or("");
    let arg = |i: usize| reply.get(i).cloned().unwrap_or_default();
    match (tag, reply.get(1).map(String::as_str)) {
        ("ok", _) => Step::Done(arg(1).parse().unwrap_or(0)),
        ("err", Some("missing")) => Step::Missing,
        ("err", Some("state")) => Step::WrongState(arg(2), arg(3)),
        ("err", Some("expired")) => Step::Expired,
        ("err", Some("not_expired")) => Step::NotExpired,
        ("err", Some("busy")) => Step::Busy,
        _ => Step::Lost,
    }
}

/// The inventory: typed access to the scripts through the guarded [`Store`].
#[derive(Debug, Clone)]
pub struct Inventory {
    store: Store,
    scripts: std::sync::Arc<Scripts>,
}

impl Inventory {
    /// Wraps a store.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            scripts: std::sync::Arc::new(Scripts::new()),
        }
    }

    /// The underlying store (for plain reads).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Holds seats or capacity and creates the saga (HELD), checking the idempotency key in the
    /// same script.
    #[allow(clippy::too_many_arguments)]
    pub async fn hold(
        &self,
        req: &HoldRequest<'_>,
        now_ms: i64,
        now_iso: &str,
        hold_ttl_ms: u64,
        lease_ms: u64,
        owner: &str,
    ) -> Result<HoldOutcome, StoreError> {
        let mut keys = vec![
            keys::event_meta(req.event_id),
            keys::event_seats(req.event_id),
            keys::reservation(req.res_id),
            keys::history(req.res_id),
            keys::lease(req.res_id),
            keys::HOLDS.to_owned(),
            keys::SAGAS.to_owned(),
            keys::user_index(&req.user_email.to_ascii_lowercase()),
        ];
        let (fp, _) = match req.idempotency {
            Some((key, fp)) => {
                keys.push(keys::idempotency(key));
                (fp, key)
            }
            None => ("", ""),
        };
        let mode = if req.seats.is_empty() { "ga" } else { "seats" };
        let mut args = Vec::with_capacity(13 + req.seats.len());
        args.extend([
            req.res_id.to_owned(),
            req.event_id.to_owned(),
            mode.to_owned(),
            req.quantity.to_string(),
            req.amount.to_string(),
            req.user_email.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            hold_ttl_ms.to_string(),
            lease_ms.to_string(),
            owner.to_owned(),
            fp.to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
        ]);
        args.extend(req.seats.iter().cloned());
        let reply: Vec<String> = self
            .store
            .invoke_script(&self.scripts.hold, &keys, &args)
            .await?;
        let arg = |i: usize| reply.get(i).cloned().unwrap_or_default();
        Ok(match reply.first().map(String::as_str) {
            Some("ok") => HoldOutcome::Held,
            Some("expired") => HoldOutcome::BlockedByExpired(arg(1)),
            Some("idem_reused") => HoldOutcome::IdempotencyReused,
            Some("idem") => HoldOutcome::Replay(IdempotencyRecord {
                state: arg(1),
                res_id: arg(2),
                err: arg(3),
                detail: arg(4),
                status: arg(5),
                body: arg(6),
            }),
            _ => HoldOutcome::Rejected {
                code: arg(1),
                detail: arg(2),
            },
        })
    }

    /// HELD → PAYMENT_PENDING.
    pub async fn begin_payment(
        &self,
        res_id: &str,
        event_id: &str,
        now_ms: i64,
        now_iso: &str,
    ) -> Result<Step, StoreError> {
        let keys = [
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::history(res_id),
            keys::HOLDS.to_owned(),
        ];
        let args = [res_id.to_owned(), now_ms.to_string(), now_iso.to_owned()];
        let reply = self
            .store
            .invoke_script(&self.scripts.begin_payment, &keys, &args)
            .await?;
        Ok(parse_step(reply))
    }

    /// PAYMENT_PENDING → CONFIRMED, with the outbox entry and the idempotent response.
    #[allow(clippy::too_many_arguments)]
    pub async fn confirm(
        &self,
        res_id: &str,
        event_id: &str,
        idempotency_key: Option<&str>,
        payment_id: &str,
        response_body: &str,
        notification_payload: &str,
        now_ms: i64,
        now_iso: &str,
    ) -> Result<Step, StoreError> {
        let mut keys = vec![
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::event_meta(event_id),
            keys::history(res_id),
            keys::SAGAS.to_owned(),
            keys::lease(res_id),
            keys::OUTBOX.to_owned(),
            keys::event_confirmed(event_id),
        ];
        if let Some(k) = idempotency_key {
            keys.push(keys::idempotency(k));
        }
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            payment_id.to_owned(),
            response_body.to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            notification_payload.to_owned(),
        ];
        let reply = self
            .store
            .invoke_script(&self.scripts.confirm, &keys, &args)
            .await?;
        Ok(parse_step(reply))
    }

    /// HELD/PAYMENT_PENDING → `new_status` (FAILED or EXPIRED) with the places back in stock.
    /// `require_expired`: only if HELD and past its deadline (the sweeper).
    #[allow(clippy::too_many_arguments)]
    pub async fn release(
        &self,
        res_id: &str,
        event_id: &str,
        idempotency_key: Option<&str>,
        new_status: &str,
        fail_code: &str,
        require_expired: bool,
        now_ms: i64,
        now_iso: &str,
    ) -> Result<Step, StoreError> {
        let mut keys = vec![
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::event_meta(event_id),
            keys::history(res_id),
            keys::SAGAS.to_owned(),
            keys::lease(res_id),
            keys::HOLDS.to_owned(),
        ];
        if let Some(k) = idempotency_key {
            keys.push(keys::idempotency(k));
        }
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            new_status.to_owned(),
            fail_code.to_owned(),
            if require_expired { "1" } else { "0" }.to_owned(),
            IDEMPOTENCY_TTL_SECS.to_string(),
            keys::hold_member(event_id, res_id),
        ];
        let reply = self
            .store
            .invoke_script(&self.scripts.release, &keys, &args)
            .await?;
        Ok(parse_step(reply))
    }

    /// Marks a CONFIRMED reservation for cancellation under this owner's lease.
    pub async fn cancel_begin(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<Step, StoreError> {
        let keys = [
            keys::reservation(res_id),
            keys::lease(res_id),
            keys::SAGAS.to_owned(),
        ];
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            owner.to_owned(),
            lease_ms.to_string(),
        ];
        let reply = self
            .store
            .invoke_script(&self.scripts.cancel_begin, &keys, &args)
            .await?;
        Ok(parse_step(reply))
    }

    /// CONFIRMED (cancel requested, refunded) → CANCELLED, seats back, outbox entry.
    pub async fn cancel(
        &self,
        res_id: &str,
        event_id: &str,
        notification_payload: &str,
        now_ms: i64,
        now_iso: &str,
    ) -> Result<Step, StoreError> {
        let keys = [
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::event_meta(event_id),
            keys::history(res_id),
            keys::SAGAS.to_owned(),
            keys::lease(res_id),
            keys::OUTBOX.to_owned(),
            keys::event_confirmed(event_id),
        ];
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            notification_payload.to_owned(),
        ];
        let reply = self
            .store
            .invoke_script(&self.scripts.cancel, &keys, &args)
            .await?;
        Ok(parse_step(reply))
    }

    /// Takes a free saga lease (`SET NX PX`). True if this owner now holds it.
    pub async fn try_lease(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(keys::lease(res_id))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms);
        let reply: Option<String> = self.store.query(&cmd).await?;
        Ok(reply.is_some())
    }

    /// Extends this owner's lease. False if it was lost.
    pub async fn renew_lease(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let keys = [keys::lease(res_id)];
        let args = [owner.to_owned(), lease_ms.to_string()];
        let renewed: i64 = self
            .store
            .invoke_script(&self.scripts.renew_lease, &keys, &args)
            .await?;
        Ok(renewed == 1)
    }

    /// Creates or resets an event. `seats` empty means general admission with `capacity`.
    pub async fn reset_event(
        &self,
        event_id: &str,
        name: &str,
        capacity: u64,
        seats: &[String],
    ) -> Result<(), StoreError> {
        let keys = [
            keys::event_meta(event_id),
            keys::event_seats(event_id),
            keys::event_confirmed(event_id),
            keys::EVENTS.to_owned(),
        ];
        let kind = if seats.is_empty() { "ga" } else { "seats" };
        let mut args = Vec::with_capacity(6 + seats.len());
        args.extend([
            event_id.to_owned(),
            name.to_owned(),
            kind.to_owned(),
            capacity.to_string(),
            new_epoch(),
            seats.join(","),
        ]);
        args.extend(seats.iter().cloned());
        let _: i64 = self
            .store
            .invoke_script(&self.scripts.reset_event, &keys, &args)
            .await?;
        Ok(())
    }

    /// Creates the demo events if Redis holds no events. True if this call created them.
    pub async fn seed_demo(&self) -> Result<bool, StoreError> {
        let keys = [
            keys::EVENTS.to_owned(),
            keys::event_meta("EVT-001"),
            keys::event_seats("EVT-001"),
            keys::event_meta("EVT-002"),
        ];
        let seats = demo_seat_ids();
        let mut args = Vec::with_capacity(2 + seats.len());
        args.push(new_epoch());
        args.push(seats.join(","));
        args.extend(seats);
        let created: i64 = self
            .store
            .invoke_script(&self.scripts.seed_demo, &keys, &args)
            .await?;
        Ok(created == 1)
    }
}

/// A fresh event epoch (distinguishes incarnations of a reset event).
fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `A1..A10, B1..B10, ..., J1..J10`: the 100 seats of the demo event EVT-001.
pub fn demo_seat_ids() -> Vec<String> {
    ('A'..='J')
        .flat_map(|row| (1..=10).map(move |n| format!("{row}{n}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_has_100_seats_a1_to_j10() {
        let s = demo_seat_ids();
        assert_eq!(s.len(), 100);
        assert_eq!(s[0], "A1");
        assert_eq!(s[99], "J10");
    }

    #[test]
    fn steps_parse() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_step(v(&["ok", "3"])), Step::Done(3));
        assert_eq!(parse_step(v(&["ok"])), Step::Done(0));
        assert_eq!(
            parse_step(v(&["err", "state", "CONFIRMED", "p1"])),
            Step::WrongState("CONFIRMED".into(), "p1".into())
        );
        assert_eq!(parse_step(v(&["err", "busy", ""])), Step::Busy);
        assert_eq!(parse_step(v(&["err", "lost", "A1"])), Step::Lost);
    }

    /// Gap 4 of issue 10: a reply the wrapper does not know must be an error, never a saga
    /// decision ("lost" makes the saga refund a successful charge).
    #[test]
    fn an_unknown_reply_is_never_a_decision() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_ne!(parse_step(v(&["surprise"])), Step::Lost);
        assert_ne!(parse_step(v(&["err", "NOSCRIPT-ish"])), Step::Lost);
    }
}
