"""The fault suite's book-keeping (tests/cluster/books.py): its arithmetic, on known cases."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tests.cluster.books import Arrival, keep, longest_stall


def test_books_count_losses_and_both_kinds_of_duplicate() -> None:
    arrivals = [
        Arrival(1.0, "evt_a", "evt_a", "a"),
        Arrival(2.0, "evt_a", "evt_a", "a"),    # redelivered: same webhook-id
        Arrival(3.0, "evt_b1", "evt_b1", "b"),
        Arrival(9.0, "evt_b2", "evt_b2", "b"),  # the same event under a new id
    ]
    books = keep("t", {"a": {"evt_a"}, "b": {"evt_b2"}, "c": {"evt_c"}}, arrivals,
                 parked=1, audited=3, http_5xx=2, window=(0.0, 10.0))
    assert (books.accepted, books.delivered, books.lost) == (3, 2, 1)
    assert (books.dup_same_id, books.dup_new_id, books.posts) == (1, 1, 4)
    assert books.stall == 6.0
    assert books.failures(15) == ["lost=1", "dup_new_id=1", "parked=1",
                                  "audited=3 (unknown 0) != POSTs=4"]
    assert str(books.row()).startswith("t ")


def test_a_clean_run_passes() -> None:
    arrivals = [Arrival(float(i), f"e{i}", f"e{i}", str(i)) for i in range(5)]
    books = keep("ok", {str(i): {f"e{i}"} for i in range(5)}, arrivals, parked=0, audited=5,
                 http_5xx=0, window=(0.0, 4.0))
    assert books.failures(15) == [] and books.stall == 1.0


@given(st.integers(0, 5), st.integers(0, 5))
def test_every_post_needs_a_record_and_only_unknown_ones_may_be_extra(
        extra: int, unknown: int) -> None:
    arrivals = [Arrival(float(i), f"e{i}", f"e{i}", str(i)) for i in range(5)]
    accepted = {str(i): {f"e{i}"} for i in range(5)}
    books = keep("u", accepted, arrivals, parked=0, audited=5 + extra, unknown=unknown,
                 http_5xx=0, window=(0.0, 4.0))
    assert (books.failures(15) == []) == (extra <= unknown)
    short = keep("u", accepted, arrivals, parked=0, audited=4, unknown=unknown, http_5xx=0,
                 window=(0.0, 4.0))
    assert short.failures(15) == [f"audited=4 (unknown {unknown}) != POSTs=5"]


def test_a_foreign_id_is_counted() -> None:
    arrivals = [Arrival(0.0, "evt_x", "evt_y", "a")]
    books = keep("f", {"a": {"evt_y"}}, arrivals, parked=0, audited=1, http_5xx=0,
                 window=(0.0, 0.0))
    assert books.foreign_ids == 1


@given(st.lists(st.floats(0, 100), max_size=30))
def test_the_longest_stall_bounds_every_gap(times: list[float]) -> None:
    stall = longest_stall(times, 0.0, 100.0)
    edges = sorted([0.0, *times, 100.0])
    assert all(b - a <= stall for a, b in itertools.pairwise(edges))
    assert stall <= 100.0 and (times or stall == 100.0)


def test_a_keyless_event_sent_again_after_no_answer_is_the_clients_duplicate() -> None:
    """A keyless HTTP client whose request died with its replica (no answer) and sends it
    again makes two events the API cannot tell apart: counted apart, not a failure. The same
    for an event that got an answer, or carried a key, is one."""
    arrivals = [
        Arrival(1.0, "evt_k1", "evt_k1", "keyless"),
        Arrival(2.0, "evt_k2", "evt_k2", "keyless"),  # sent again after no answer
        Arrival(3.0, "evt_o1", "evt_o1", "other"),
        Arrival(4.0, "evt_o2", "evt_o2", "other"),    # a new id the platform should have avoided
    ]
    books = keep("t", {"keyless": {"evt_k2"}, "other": {"evt_o2"}}, arrivals, parked=0,
                 audited=4, http_5xx=0, window=(0.0, 4.0), unanswered_keyless={"keyless"})
    assert (books.dup_new_id, books.dup_new_id_keyless) == (1, 1)
    assert books.failures(15) == ["dup_new_id=1"]
