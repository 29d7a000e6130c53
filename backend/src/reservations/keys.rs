//! Redis key naming. One event's keys share the hash tag `{<eventId>}`, one reservation's keys the
//! hash tag `{<reservationId>}`. Identifiers are validated before they reach these functions
//! (no braces, no whitespace), so a key can never be forged from input.

/// Set of every event id.
pub const EVENTS: &str = "events";
/// Sorted set of expirable holds: member `<eventId>|<reservationId>`, score = hold deadline (ms).
pub const HOLDS: &str = "holds";
/// Sorted set of unfinished sagas: member reservation id, score = when recovery may look (ms).
pub const SAGAS: &str = "sagas";
/// The notification outbox stream consumed by the outbox worker.
pub const OUTBOX: &str = "outbox:notifications";

/// Event metadata hash: name, kind, capacity, available, held, sold, epoch, seatIds.
pub fn event_meta(event_id: &str) -> String {
    format!("ev:{{{event_id}}}:meta")
}

/// Seat-state hash of a numbered event: seat id → `A` | `H|res|deadline` | `P|res` | `S|res`.
pub fn event_seats(event_id: &str) -> String {
    format!("ev:{{{event_id}}}:seats")
}

/// Set of the ids of an event's CONFIRMED reservations (for the audit).
pub fn event_confirmed(event_id: &str) -> String {
    format!("ev:{{{event_id}}}:confirmed")
}

/// Reservation (saga) hash. The outbox worker writes its `notification` field.
pub fn reservation(res_id: &str) -> String {
    format!("res:{{{res_id}}}")
}

/// List of the reservation's history entries (JSON `{step, status, at}`).
pub fn history(res_id: &str) -> String {
    format!("res:{{{res_id}}}:hist")
}

/// The saga lease (`SET NX PX`, value = owner replica).
pub fn lease(res_id: &str) -> String {
    format!("res:{{{res_id}}}:lease")
}

/// Sorted set of one user's reservation ids by creation time.
pub fn user_index(email_lower: &str) -> String {
    format!("user:{{{email_lower}}}:res")
}

/// Idempotency record for one `Idempotency-Key`.
pub fn idempotency(key: &str) -> String {
    format!("idem:{{{key}}}")
}

/// Member of [`HOLDS`] for a reservation.
pub fn hold_member(event_id: &str, res_id: &str) -> String {
    format!("{event_id}|{res_id}")
}

/// Splits a [`HOLDS`] member back into (event id, reservation id).
pub fn split_hold_member(member: &str) -> Option<(&str, &str)> {
    member.split_once('|')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_keys_share_a_hash_tag() {
        assert_eq!(event_meta("EVT-001"), "ev:{EVT-001}:meta");
        assert_eq!(event_seats("EVT-001"), "ev:{EVT-001}:seats");
        assert_eq!(event_confirmed("EVT-001"), "ev:{EVT-001}:confirmed");
    }

    #[test]
    fn reservation_keys_share_a_hash_tag() {
        assert_eq!(reservation("r1"), "res:{r1}");
        assert_eq!(history("r1"), "res:{r1}:hist");
        assert_eq!(lease("r1"), "res:{r1}:lease");
    }

    #[test]
    fn hold_member_round_trips() {
        let m = hold_member("EVT-1", "abc");
        assert_eq!(split_hold_member(&m), Some(("EVT-1", "abc")));
    }
}
