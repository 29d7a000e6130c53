//! Redis key naming, laid out in slot groups (see [`crate::slots`]): an event's keys, its
//! reservations' keys and the group's indexes all carry the group's hash tag, so every saga
//! script touches one slot. Only the idempotency record is keyed by the client's key (its own
//! slot: a retry with another body may name another event, and must still find it).
//! Identifiers are validated before they reach these functions (no braces, no whitespace), so a
//! key can never be forged from input.

use crate::slots::{self, group_tag, Group};

/// The slot group of an event.
pub fn event_group(event_id: &str) -> Group {
    slots::group_of_id(event_id)
}

/// The slot group of a reservation (its id was drawn into its event's group).
pub fn reservation_group(res_id: &str) -> Group {
    slots::group_of_id(res_id)
}

/// Set of the ids of the group's events.
pub fn events(g: Group) -> String {
    format!("events:{{{}}}", group_tag(g))
}

/// Sorted set of the group's expirable holds: member `<eventId>|<reservationId>`, score = hold
/// deadline (ms).
pub fn holds(g: Group) -> String {
    format!("holds:{{{}}}", group_tag(g))
}

/// Sorted set of the group's unfinished sagas: member reservation id, score = when recovery may
/// look (ms).
pub fn sagas(g: Group) -> String {
    format!("sagas:{{{}}}", group_tag(g))
}

/// The group's notification outbox stream.
pub fn outbox(g: Group) -> String {
    format!("outbox:{{{}}}", group_tag(g))
}

/// Event metadata hash: name, kind, capacity, available, held, sold, epoch, seatIds.
pub fn event_meta(event_id: &str) -> String {
    format!(
        "ev:{{{}}}:{event_id}:meta",
        group_tag(event_group(event_id))
    )
}

/// Seat-state hash of a numbered event: seat id → `A` | `H|res|deadline` | `P|res` | `S|res`.
pub fn event_seats(event_id: &str) -> String {
    format!(
        "ev:{{{}}}:{event_id}:seats",
        group_tag(event_group(event_id))
    )
}

/// Set of the ids of an event's CONFIRMED reservations (for the audit).
pub fn event_confirmed(event_id: &str) -> String {
    format!(
        "ev:{{{}}}:{event_id}:confirmed",
        group_tag(event_group(event_id))
    )
}

/// Reservation (saga) hash. The outbox worker writes its `notification` field.
pub fn reservation(res_id: &str) -> String {
    format!("res:{{{}}}:{res_id}", group_tag(reservation_group(res_id)))
}

/// List of the reservation's history entries (JSON `{step, status, at}`).
pub fn history(res_id: &str) -> String {
    format!(
        "res:{{{}}}:{res_id}:hist",
        group_tag(reservation_group(res_id))
    )
}

/// The saga lease (`SET NX PX`, value = owner replica).
pub fn lease(res_id: &str) -> String {
    format!(
        "res:{{{}}}:{res_id}:lease",
        group_tag(reservation_group(res_id))
    )
}

/// Sorted set of one user's reservation ids in group `g`, by creation time. A user's listing
/// reads every group.
pub fn user_index(g: Group, email_lower: &str) -> String {
    format!("user:{{{}}}:{email_lower}:res", group_tag(g))
}

/// Idempotency record for one `Idempotency-Key` (its own slot).
pub fn idempotency(key: &str) -> String {
    format!("idem:{{{key}}}")
}

/// Member of [`holds`] for a reservation.
pub fn hold_member(event_id: &str, res_id: &str) -> String {
    format!("{event_id}|{res_id}")
}

/// Splits a [`holds`] member back into (event id, reservation id).
pub fn split_hold_member(member: &str) -> Option<(&str, &str)> {
    member.split_once('|')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{key_slot, new_id_in_group};

    #[test]
    fn an_events_saga_keys_share_one_slot() {
        let ev = "EVT-001";
        let g = event_group(ev);
        let res = new_id_in_group(g);
        let slot = key_slot(&event_meta(ev));
        for k in [
            event_seats(ev),
            event_confirmed(ev),
            reservation(&res),
            history(&res),
            lease(&res),
            holds(g),
            sagas(g),
            outbox(g),
            events(g),
            user_index(g, "a@b.c"),
        ] {
            assert_eq!(key_slot(&k), slot, "{k}");
        }
    }

    #[test]
    fn keys_name_their_entity() {
        assert!(event_meta("EVT-001").ends_with(":EVT-001:meta"));
        assert!(reservation("r1").ends_with(":r1"));
        assert!(history("r1").ends_with(":r1:hist"));
        assert_eq!(idempotency("k"), "idem:{k}");
    }

    #[test]
    fn hold_member_round_trips() {
        let m = hold_member("EVT-1", "abc");
        assert_eq!(split_hold_member(&m), Some(("EVT-1", "abc")));
    }
}
