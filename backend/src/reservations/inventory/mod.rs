//! The seat inventory and saga state in Redis. Every state change is one Lua script in this
//! directory (each validates everything before writing, is O(seats requested), and is a
//! compare-and-set on the saga's status); this module gives each script a typed wrapper, and
//! [`read`] holds the plain reads. Nothing else in the service talks to Redis for reservations.
//!
//! Replies are parsed strictly: a reply a wrapper does not know is
//! [`InventoryError::UnexpectedReply`], an error the saga reports, never a decision it acts on.
//! Key layout is in [`super::keys`], seat states in `prelude.lua`.

mod idempotency;
mod read;

use redis::Script;

use idempotency::IdemEnd;
pub use read::UserReservations;

use super::keys;
use super::model::{Failure, ReservationStatus};
use crate::slots::{Group, GROUPS};
use crate::store::{Store, StoreError};

macro_rules! lua {
    ($file:literal) => {
        Script::new(concat!(include_str!("prelude.lua"), include_str!($file)))
    };
}

/// How long an idempotency record is kept (24 h).
pub const IDEMPOTENCY_TTL_SECS: u64 = 24 * 3600;
/// Default life of a reservation that ended without a sale (FAILED, EXPIRED, CANCELLED): 7 days.
pub const DEFAULT_UNSOLD_TTL_SECS: u64 = 7 * 24 * 3600;

/// The loaded scripts (SHA computed once).
#[derive(Debug)]
struct Scripts {
    hold: Script,
    begin_payment: Script,
    confirm: Script,
    abandon: Script,
    release: Script,
    cancel_begin: Script,
    cancel: Script,
    renew_lease: Script,
    claim: Script,
    unindex: Script,
    reset_event: Script,
    idem_claim: Script,
    idem_finish: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            hold: lua!("hold.lua"),
            begin_payment: lua!("begin_payment.lua"),
            confirm: lua!("confirm.lua"),
            abandon: lua!("abandon.lua"),
            release: lua!("release.lua"),
            cancel_begin: lua!("cancel_begin.lua"),
            cancel: lua!("cancel.lua"),
            renew_lease: lua!("renew_lease.lua"),
            claim: lua!("claim.lua"),
            unindex: lua!("unindex.lua"),
            reset_event: lua!("reset_event.lua"),
            idem_claim: lua!("idem_claim.lua"),
            idem_finish: lua!("idem_finish.lua"),
        }
    }
}

/// The outbox worker's script (it runs on its own connection): sets a reservation's
/// `notification` field to `sent` or `failed` if the reservation still exists.
pub fn mark_notification_script() -> Script {
    lua!("mark_notification.lua")
}

/// The outbox worker's end of a delivery round (`outbox_done.lua`): marks the round's
/// reservations of the stream's own slot group and acknowledges and deletes its entries, in one
/// call. KEYS: the stream, then the reservation hashes; ARGV: the consumer group, one
/// `sent`/`failed` per reservation, then the entry ids.
pub fn outbox_done_script() -> Script {
    lua!("outbox_done.lua")
}

/// Why an inventory call produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Redis unreachable, timed out, or answered with an error reply.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A script answered something its wrapper does not know (a version mismatch between the
    /// scripts and this binary, or a bug). Nothing may be decided from it.
    #[error("{script}.lua answered {reply:?}, which this wrapper does not know")]
    UnexpectedReply {
        /// The script.
        script: &'static str,
        /// Its reply.
        reply: Vec<String>,
    },
    /// A reservation id not drawn into its event's slot group (see [`crate::slots`]): its keys
    /// would be on another slot than the event's. A bug in the caller; nothing was written.
    #[error("reservation id {res_id} is not in the slot group of event {event_id}")]
    Misplaced {
        /// The reservation id.
        res_id: String,
        /// The event.
        event_id: String,
    },
}

impl InventoryError {
    /// True when Redis could not be reached or did not answer in time (worth a 503 and a retry),
    /// false for answers that were wrong (error replies, unknown replies: a 500).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, InventoryError::Store(e) if e.reply_message().is_none())
    }

    /// `Retry-After` seconds for a 503.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            InventoryError::Store(e) => e.retry_after_secs(),
            InventoryError::UnexpectedReply { .. } | InventoryError::Misplaced { .. } => 1,
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

/// Timing and ownership of a hold.
#[derive(Debug, Clone)]
pub struct HoldTiming<'a> {
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// Now, RFC 3339.
    pub now_iso: &'a str,
    /// How long the hold lasts if no payment starts.
    pub hold_ttl_ms: u64,
    /// Saga lease taken by `owner`.
    pub lease_ms: u64,
    /// Lease owner (this replica).
    pub owner: &'a str,
    /// `Some(budget)`: go straight to PAYMENT_PENDING, confirmable for `budget` ms of Redis
    /// time. `None`: stay HELD (expirable) until [`Inventory::begin_payment`].
    pub pay_within_ms: Option<u64>,
    /// The request's deadline (ms since the epoch): nothing is held after it on Redis' clock.
    pub not_after_ms: Option<i64>,
    /// An idempotency claim older than this (ms) whose saga does not exist may be taken over
    /// (the request deadline plus a margin for clock differences between shards).
    pub stale_claim_ms: u64,
}

/// A stored idempotency record (see `idem_claim.lua`).
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
    /// Still `running` long after the first request's deadline.
    pub stale: bool,
}

/// Result of the hold script.
#[derive(Debug, Clone, PartialEq)]
pub enum HoldOutcome {
    /// Seats held, saga created (HELD, or PAYMENT_PENDING with a payment budget).
    Held,
    /// Refused; nothing written (except the idempotency record of the refusal).
    Rejected {
        /// Why.
        failure: Failure,
        /// The seat or event concerned.
        detail: String,
    },
    /// A requested seat is blocked by this expired, not yet swept hold.
    BlockedByExpired(String),
    /// Same key, other body.
    IdempotencyReused,
    /// Same key and body seen before.
    Replay(IdempotencyRecord),
    /// Redis' clock had passed the request's deadline: nothing was held.
    TooLate,
}

/// Result of a saga transition script.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The transition happened. For `release`, the number of places returned to stock.
    Done(u32),
    /// No such reservation.
    Missing,
    /// The reservation is not in the expected state (its status, and its payment id if any).
    WrongState(ReservationStatus, String),
    /// The hold passed its deadline before the transition.
    Expired,
    /// The reservation's seats are no longer its own (the event was reset).
    Lost,
    /// Sweeper: the hold has not expired yet.
    NotExpired,
    /// Someone else holds the saga lease.
    Busy,
    /// Confirm: the saga was abandoned (a failure was decided; it must be refunded).
    Abandoned,
    /// Confirm: the saga's confirmBy instant has passed; it must be refunded.
    TooLate,
}

/// Result of recovery's claim on a due saga.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica now holds the lease: drive the saga.
    Claimed,
    /// Someone holds the lease; the saga was moved to when it ends.
    Busy,
    /// Nothing left to do; removed from the index.
    Gone,
}

fn unexpected(script: &'static str, reply: &[String]) -> InventoryError {
    InventoryError::UnexpectedReply {
        script,
        reply: reply.to_vec(),
    }
}

/// Parses a transition script's reply exactly (see each script's `Returns`).
fn parse_step(script: &'static str, reply: Vec<String>) -> Result<Step, InventoryError> {
    let tags: Vec<&str> = reply.iter().map(String::as_str).collect();
    let step = match tags.as_slice() {
        ["ok", n] => n.parse().ok().map(Step::Done),
        ["missing"] => Some(Step::Missing),
        ["state", status, payment] => {
            ReservationStatus::parse(status).map(|s| Step::WrongState(s, (*payment).to_owned()))
        }
        ["expired"] => Some(Step::Expired),
        ["lost", _] => Some(Step::Lost),
        ["not_expired", _] => Some(Step::NotExpired),
        ["busy"] => Some(Step::Busy),
        ["abandoned"] => Some(Step::Abandoned),
        ["too_late"] => Some(Step::TooLate),
        _ => None,
    };
    step.ok_or_else(|| unexpected(script, &reply))
}

fn parse_hold(reply: Vec<String>) -> Result<HoldOutcome, InventoryError> {
    let tags: Vec<&str> = reply.iter().map(String::as_str).collect();
    let outcome = match tags.as_slice() {
        ["ok", _] => Some(HoldOutcome::Held),
        ["rejected", code, detail] => Failure::parse(code).map(|failure| HoldOutcome::Rejected {
            failure,
            detail: (*detail).to_owned(),
        }),
        ["expired", holder] => Some(HoldOutcome::BlockedByExpired((*holder).to_owned())),
        ["too_late"] => Some(HoldOutcome::TooLate),
        _ => None,
    };
    outcome.ok_or_else(|| unexpected("hold", &reply))
}

/// The inventory: typed access to the scripts and reads through the guarded [`Store`].
#[derive(Debug, Clone)]
pub struct Inventory {
    store: Store,
    scripts: std::sync::Arc<Scripts>,
    unsold_ttl_secs: u64,
}

impl Inventory {
    /// Wraps a store; unsold reservations expire after [`DEFAULT_UNSOLD_TTL_SECS`].
    pub fn new(store: Store) -> Self {
        Self::with_unsold_ttl(store, DEFAULT_UNSOLD_TTL_SECS)
    }

    /// Wraps a store; reservations that end without a sale expire after `unsold_ttl_secs`
    /// (0: never).
    pub fn with_unsold_ttl(store: Store, unsold_ttl_secs: u64) -> Self {
        Self {
            store,
            scripts: std::sync::Arc::new(Scripts::new()),
            unsold_ttl_secs,
        }
    }

    /// The underlying store (its breaker state and `PING`, for readiness and metrics).
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn run(
        &self,
        script: &Script,
        keys: &[String],
        args: &[String],
    ) -> Result<Vec<String>, InventoryError> {
        Ok(self.store.invoke_script(script, keys, args).await?)
    }

    /// Holds seats or capacity and creates the saga. With an idempotency key the key is claimed
    /// first on its own slot (see `idem_claim.lua` for the protocol), and a rejection is
    /// recorded in it afterwards.
    pub async fn hold(
        &self,
        req: &HoldRequest<'_>,
        t: &HoldTiming<'_>,
    ) -> Result<HoldOutcome, InventoryError> {
        if keys::reservation_group(req.res_id) != keys::event_group(req.event_id) {
            return Err(InventoryError::Misplaced {
                res_id: req.res_id.to_owned(),
                event_id: req.event_id.to_owned(),
            });
        }
        if let Some((key, fingerprint)) = req.idempotency {
            if let Some(answer) = self.claim_key(key, fingerprint, req.res_id, t).await? {
                return Ok(answer);
            }
        }
        let outcome = self.hold_script(req, t).await?;
        if outcome == HoldOutcome::Held {
            // The charge follows: the saga must not vanish in a failover after it.
            self.store
                .wait_for_replica(&keys::reservation(req.res_id))
                .await;
        }
        if let (HoldOutcome::Rejected { failure, detail }, Some((key, _))) =
            (&outcome, req.idempotency)
        {
            self.finish_key(key, req.res_id, IdemEnd::Failed(*failure, detail))
                .await;
        }
        Ok(outcome)
    }

    async fn hold_script(
        &self,
        req: &HoldRequest<'_>,
        t: &HoldTiming<'_>,
    ) -> Result<HoldOutcome, InventoryError> {
        let g = keys::event_group(req.event_id);
        let keys = [
            keys::event_meta(req.event_id),
            keys::event_seats(req.event_id),
            keys::reservation(req.res_id),
            keys::history(req.res_id),
            keys::lease(req.res_id),
            keys::holds(g),
            keys::sagas(g),
            keys::user_index(g, &req.user_email.to_ascii_lowercase()),
        ];
        let idem_key = req
            .idempotency
            .map(|(key, _)| keys::idempotency(key))
            .unwrap_or_default();
        let mode = if req.seats.is_empty() { "ga" } else { "seats" };
        let mut args = Vec::with_capacity(14 + req.seats.len());
        args.extend([
            req.res_id.to_owned(),
            req.event_id.to_owned(),
            mode.to_owned(),
            req.quantity.to_string(),
            req.amount.to_string(),
            req.user_email.to_owned(),
            t.now_ms.to_string(),
            t.now_iso.to_owned(),
            t.hold_ttl_ms.to_string(),
            t.lease_ms.to_string(),
            t.owner.to_owned(),
            idem_key,
            t.not_after_ms.map(|n| n.to_string()).unwrap_or_default(),
            t.pay_within_ms
                .map(|b| b.max(1).to_string())
                .unwrap_or_default(),
        ]);
        args.extend(req.seats.iter().cloned());
        parse_hold(self.run(&self.scripts.hold, &keys, &args).await?)
    }

    /// HELD → PAYMENT_PENDING, confirmable for `pay_within_ms` of Redis time.
    pub async fn begin_payment(
        &self,
        res_id: &str,
        event_id: &str,
        now_ms: i64,
        now_iso: &str,
        pay_within_ms: u64,
    ) -> Result<Step, InventoryError> {
        let keys = [
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::history(res_id),
            keys::holds(keys::event_group(event_id)),
        ];
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            pay_within_ms.max(1).to_string(),
        ];
        let reply = self.run(&self.scripts.begin_payment, &keys, &args).await?;
        parse_step("begin_payment", reply)
    }

    /// PAYMENT_PENDING → CONFIRMED, with the outbox entry and the idempotent response. Refused
    /// ([`Step::Abandoned`], [`Step::TooLate`]) once a failure was decided or confirmBy passed.
    pub async fn confirm(&self, c: &Confirmation<'_>) -> Result<Step, InventoryError> {
        let g = keys::event_group(c.event_id);
        let keys = [
            keys::reservation(c.res_id),
            keys::event_seats(c.event_id),
            keys::event_meta(c.event_id),
            keys::history(c.res_id),
            keys::sagas(g),
            keys::lease(c.res_id),
            keys::outbox(g),
            keys::event_confirmed(c.event_id),
        ];
        let args = [
            c.res_id.to_owned(),
            c.now_iso.to_owned(),
            c.payment_id.to_owned(),
            c.notification_payload.to_owned(),
        ];
        let reply = self.run(&self.scripts.confirm, &keys, &args).await?;
        let step = parse_step("confirm", reply)?;
        if matches!(step, Step::Done(_)) {
            // A 201 follows: the sale must not vanish in a failover after it.
            self.store
                .wait_for_replica(&keys::reservation(c.res_id))
                .await;
        }
        if let (Step::Done(_), Some(key)) = (&step, c.idempotency_key) {
            self.finish_key(key, c.res_id, IdemEnd::Created(c.response_body))
                .await;
        }
        Ok(step)
    }

    /// Writes the "never confirm, refund" decision on a PAYMENT_PENDING saga.
    pub async fn abandon(&self, res_id: &str) -> Result<Step, InventoryError> {
        let keys = [keys::reservation(res_id)];
        let reply = self.run(&self.scripts.abandon, &keys, &[]).await?;
        parse_step("abandon", reply)
    }

    /// HELD/PAYMENT_PENDING → `end` (FAILED or EXPIRED) with the places back in stock; the
    /// reservation then expires after the unsold TTL. `require_expired`: only if HELD and past
    /// its deadline (the sweeper).
    pub async fn release(&self, r: &Release<'_>) -> Result<Step, InventoryError> {
        let g = keys::event_group(r.event_id);
        let keys = [
            keys::reservation(r.res_id),
            keys::event_seats(r.event_id),
            keys::event_meta(r.event_id),
            keys::history(r.res_id),
            keys::sagas(g),
            keys::lease(r.res_id),
            keys::holds(g),
        ];
        let args = [
            r.res_id.to_owned(),
            r.now_ms.to_string(),
            r.now_iso.to_owned(),
            r.end.as_str().to_owned(),
            r.failure.as_str().to_owned(),
            if r.require_expired { "1" } else { "0" }.to_owned(),
            keys::hold_member(r.event_id, r.res_id),
            self.unsold_ttl_secs.to_string(),
        ];
        let reply = self.run(&self.scripts.release, &keys, &args).await?;
        let step = parse_step("release", reply)?;
        if let (Step::Done(_), Some(key)) = (&step, r.idempotency_key) {
            self.finish_key(key, r.res_id, IdemEnd::Failed(r.failure, ""))
                .await;
        }
        Ok(step)
    }

    /// Marks a CONFIRMED reservation for cancellation under this owner's lease.
    pub async fn cancel_begin(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<Step, InventoryError> {
        let keys = [
            keys::reservation(res_id),
            keys::lease(res_id),
            keys::sagas(keys::reservation_group(res_id)),
        ];
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            owner.to_owned(),
            lease_ms.to_string(),
        ];
        let reply = self.run(&self.scripts.cancel_begin, &keys, &args).await?;
        parse_step("cancel_begin", reply)
    }

    /// CONFIRMED (cancel requested, refunded) → CANCELLED, seats back, outbox entry; the
    /// reservation then expires after the unsold TTL.
    pub async fn cancel(
        &self,
        res_id: &str,
        event_id: &str,
        notification_payload: &str,
        now_ms: i64,
        now_iso: &str,
    ) -> Result<Step, InventoryError> {
        let g = keys::event_group(event_id);
        let keys = [
            keys::reservation(res_id),
            keys::event_seats(event_id),
            keys::event_meta(event_id),
            keys::history(res_id),
            keys::sagas(g),
            keys::lease(res_id),
            keys::outbox(g),
            keys::event_confirmed(event_id),
        ];
        let args = [
            res_id.to_owned(),
            now_ms.to_string(),
            now_iso.to_owned(),
            notification_payload.to_owned(),
            self.unsold_ttl_secs.to_string(),
        ];
        let reply = self.run(&self.scripts.cancel, &keys, &args).await?;
        parse_step("cancel", reply)
    }

    /// Recovery's claim on a due saga (see `claim.lua`).
    pub async fn claim(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<Claim, InventoryError> {
        let keys = [
            keys::reservation(res_id),
            keys::lease(res_id),
            keys::sagas(keys::reservation_group(res_id)),
        ];
        let args = [
            res_id.to_owned(),
            owner.to_owned(),
            lease_ms.to_string(),
            now_ms.to_string(),
        ];
        let reply = self.run(&self.scripts.claim, &keys, &args).await?;
        match reply.first().map(String::as_str) {
            Some("claimed") if reply.len() == 1 => Ok(Claim::Claimed),
            Some("busy") if reply.len() == 1 => Ok(Claim::Busy),
            Some("gone") if reply.len() == 1 => Ok(Claim::Gone),
            _ => Err(unexpected("claim", &reply)),
        }
    }

    /// Extends this owner's lease and moves the saga's recovery score with it. False if the
    /// lease was lost.
    pub async fn renew_lease(
        &self,
        res_id: &str,
        owner: &str,
        lease_ms: u64,
        now_ms: i64,
    ) -> Result<bool, InventoryError> {
        let keys = [
            keys::lease(res_id),
            keys::sagas(keys::reservation_group(res_id)),
        ];
        let args = [
            owner.to_owned(),
            lease_ms.to_string(),
            res_id.to_owned(),
            now_ms.to_string(),
        ];
        let renewed: i64 = self
            .store
            .invoke_script(&self.scripts.renew_lease, &keys, &args)
            .await?;
        Ok(renewed == 1)
    }

    /// Drops a malformed member from group `g`'s holds index.
    pub async fn forget_hold_member(&self, g: Group, member: &str) -> Result<(), InventoryError> {
        self.unindex(&keys::holds(g), &[member.to_owned()]).await
    }

    async fn unindex(&self, key: &str, members: &[String]) -> Result<(), InventoryError> {
        let _: i64 = self
            .store
            .invoke_script(&self.scripts.unindex, &[key.to_owned()], members)
            .await?;
        Ok(())
    }

    /// Creates or resets an event. `seats` empty means general admission with `capacity`.
    pub async fn reset_event(
        &self,
        event_id: &str,
        name: &str,
        capacity: u64,
        seats: &[String],
    ) -> Result<(), InventoryError> {
        self.write_event(event_id, name, capacity, seats, false)
            .await
            .map(|_| ())
    }

    /// Creates the demo events if Redis holds no events; how many this call created (two
    /// replicas seeding at once create each event once).
    pub async fn seed_demo(&self) -> Result<usize, InventoryError> {
        for g in 0..GROUPS {
            let n: u64 = self
                .store
                .query(redis::cmd("SCARD").arg(keys::events(g)))
                .await?;
            if n > 0 {
                return Ok(0);
            }
        }
        let seats = demo_seat_ids();
        let concert = "Demo concert (numbered seats)";
        let festival = "Demo festival (general admission)";
        let a = self
            .write_event("EVT-001", concert, seats.len() as u64, &seats, true)
            .await?;
        let b = self
            .write_event("EVT-002", festival, 1000, &[], true)
            .await?;
        Ok(usize::from(a) + usize::from(b))
    }

    /// `reset_event.lua`; with `only_if_absent` an existing event is left alone. True if
    /// written.
    async fn write_event(
        &self,
        event_id: &str,
        name: &str,
        capacity: u64,
        seats: &[String],
        only_if_absent: bool,
    ) -> Result<bool, InventoryError> {
        let keys = [
            keys::event_meta(event_id),
            keys::event_seats(event_id),
            keys::event_confirmed(event_id),
            keys::events(keys::event_group(event_id)),
        ];
        let kind = if seats.is_empty() { "ga" } else { "seats" };
        let mut args = Vec::with_capacity(7 + seats.len());
        args.extend([
            event_id.to_owned(),
            name.to_owned(),
            kind.to_owned(),
            capacity.to_string(),
            new_epoch(),
            seats.join(","),
            if only_if_absent { "1" } else { "0" }.to_owned(),
        ]);
        args.extend(seats.iter().cloned());
        let written: i64 = self
            .store
            .invoke_script(&self.scripts.reset_event, &keys, &args)
            .await?;
        Ok(written == 1)
    }
}

/// What `confirm.lua` needs.
#[derive(Debug, Clone)]
pub struct Confirmation<'a> {
    /// Reservation id.
    pub res_id: &'a str,
    /// Its event.
    pub event_id: &'a str,
    /// The creating request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<&'a str>,
    /// The provider's payment id.
    pub payment_id: &'a str,
    /// The 201 body stored for idempotent replays (written to the idempotency record after the
    /// confirmation).
    pub response_body: &'a str,
    /// The outbox entry's payload.
    pub notification_payload: &'a str,
    /// Now, RFC 3339 (history).
    pub now_iso: &'a str,
}

/// What `release.lua` needs.
#[derive(Debug, Clone)]
pub struct Release<'a> {
    /// Reservation id.
    pub res_id: &'a str,
    /// Its event.
    pub event_id: &'a str,
    /// The creating request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<&'a str>,
    /// FAILED or EXPIRED.
    pub end: ReservationStatus,
    /// Why.
    pub failure: Failure,
    /// Sweeper: only a HELD saga past its deadline.
    pub require_expired: bool,
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// Now, RFC 3339.
    pub now_iso: &'a str,
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

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn demo_has_100_seats_a1_to_j10() {
        let s = demo_seat_ids();
        assert_eq!(s.len(), 100);
        assert_eq!(s[0], "A1");
        assert_eq!(s[99], "J10");
    }

    #[test]
    fn steps_parse() {
        let p = |a: &[&str]| parse_step("t", v(a)).ok();
        assert_eq!(p(&["ok", "3"]), Some(Step::Done(3)));
        assert_eq!(
            p(&["state", "CONFIRMED", "p1"]),
            Some(Step::WrongState(ReservationStatus::Confirmed, "p1".into()))
        );
        assert_eq!(p(&["busy"]), Some(Step::Busy));
        assert_eq!(p(&["lost", "A1"]), Some(Step::Lost));
        assert_eq!(p(&["too_late"]), Some(Step::TooLate));
        assert_eq!(p(&["abandoned"]), Some(Step::Abandoned));
    }

    /// Gap 4 of issue 10: a reply the wrapper does not know must be an error, never a saga
    /// decision (the old catch-all mapped it to "lost", which refunds a successful charge).
    #[test]
    fn an_unknown_reply_is_never_a_decision() {
        for reply in [
            v(&["surprise"]),
            v(&["err", "NOSCRIPT-ish"]),
            v(&["ok"]),
            v(&["ok", "many"]),
            v(&["state", "SHIPPED", ""]),
            v(&[]),
        ] {
            assert!(
                matches!(
                    parse_step("confirm", reply.clone()),
                    Err(InventoryError::UnexpectedReply { .. })
                ),
                "{reply:?}"
            );
        }
        assert!(parse_hold(v(&["rejected", "gremlins", "x"])).is_err());
        assert!(parse_hold(v(&["err", "sold_out", "x"])).is_err());
    }
}
