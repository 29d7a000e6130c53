"""Schemathesis hooks for scripts/schemathesis.sh.

Random event and seat ids almost never name a real event, so without help nearly every generated
reservation would stop at 404 `event_not_found` and the saga (hold, charge, confirm, cancel) and
the stateful phase (which follows the links of a 201) would go untested. These hooks swap some
*valid* generated ids for ids of the demo data (EVT-001 with seats A1..J10, EVT-002 general
admission). A valid id is only ever replaced by another valid id, so a case that was valid by the
schema stays valid and an invalid one stays invalid. The choices are drawn by Hypothesis, so a run
stays reproducible from its seed.
"""

import re

import schemathesis
from hypothesis import strategies as st

EVENTS = ["EVT-001", "EVT-002"]
SEATS = [f"{row}{n}" for row in "ABCDEFGHIJ" for n in range(1, 11)]
EVENT_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SEAT_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def _valid(pattern, value):
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _is(context, method, path):
    op = context.operation
    return op is not None and op.method.upper() == method and op.path == path


@schemathesis.hook
def flatmap_body(context, body):
    if not _is(context, "POST", "/api/reservations") or not isinstance(body, dict):
        return st.just(body)
    if not _valid(EVENT_ID, body.get("eventId")):
        return st.just(body)
    seats = body.get("seats")
    n_seats = len(seats) if isinstance(seats, list) and all(_valid(SEAT_ID, s) for s in seats) else 0

    # The event that fits the body's shape (numbered seats or general admission), mostly.
    has_seat = "seatId" in body or "seats" in body
    has_quantity = "quantity" in body
    fitting = "EVT-001" if has_seat and not has_quantity else "EVT-002" if has_quantity else None

    def build(choice):
        use_real, other_event, seat, picked = choice
        if use_real == 0:
            return body
        new = dict(body)
        new["eventId"] = fitting if fitting and use_real < 3 else other_event
        if _valid(SEAT_ID, new.get("seatId")):
            new["seatId"] = seat
        if n_seats:
            new["seats"] = picked[:n_seats]
        return new

    return st.tuples(
        st.integers(0, 3),
        st.sampled_from(EVENTS),
        st.sampled_from(SEATS),
        st.permutations(SEATS),
    ).map(build)


@schemathesis.hook
def flatmap_path_parameters(context, path_parameters):
    if not _is(context, "GET", "/api/events/{eventId}"):
        return st.just(path_parameters)
    if not isinstance(path_parameters, dict) or not _valid(EVENT_ID, path_parameters.get("eventId")):
        return st.just(path_parameters)
    return st.one_of(
        st.just(path_parameters),
        st.sampled_from(EVENTS).map(lambda e: {**path_parameters, "eventId": e}),
    )
