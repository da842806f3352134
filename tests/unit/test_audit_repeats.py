"""Every POST audited (issue #17, item 8): a repeated POST of an attempt is a record of its
own, marked ``details.repeat``; a redelivered fact (same id) is still one record."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.audit import decisions
from services.audit.decisions import GENESIS_HASH, REPEAT_KEY
from shared.contracts import AuditFact

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)


def post(fact_id: str, delivery: str = "dlv_1", attempt: int = 1,
         kind: str = "delivery.attempted") -> AuditFact:
    return AuditFact(id=fact_id, kind=kind, occurred_at=T0, service="deliverer",
                     delivery_id=delivery, attempt=attempt, details={"next": "done"})


def appended(facts: list[AuditFact], existing: set[str] | None = None,
             recorded: set[tuple[str, int]] | None = None) -> decisions.Appended:
    return decisions.append(facts, existing_ids=existing or set(), head_seq=0,
                           head_hash=GENESIS_HASH, recorded_at=T0,
                           attempts_recorded=recorded or set())


def test_a_second_post_of_an_attempt_is_recorded_and_marked() -> None:
    result = appended([post("fct_a"), post("fct_b"), post("fct_c", attempt=2)])
    assert [r["id"] for r in result.records] == ["fct_a", "fct_b", "fct_c"]
    assert [r["details"].get(REPEAT_KEY) for r in result.records] == [None, True, None]


def test_a_repeat_of_an_attempt_stored_earlier_is_marked() -> None:
    result = appended([post("fct_b")], recorded={("dlv_1", 1)})
    [record] = result.records
    assert record["details"][REPEAT_KEY] is True


def test_a_redelivered_fact_is_still_one_record() -> None:
    result = appended([post("fct_a"), post("fct_a")], existing={"fct_z"})
    assert [r["id"] for r in result.records] == ["fct_a"] and result.duplicates == 1
    assert REPEAT_KEY not in result.records[0]["details"]
    again = appended([post("fct_a")], existing={"fct_a"}, recorded={("dlv_1", 1)})
    assert again.records == [] and again.duplicates == 1


def test_other_kinds_are_never_repeats() -> None:
    result = appended([post("fct_a", kind="delivery.dead_lettered"),
                       post("fct_b", kind="delivery.dead_lettered")])
    assert all(REPEAT_KEY not in r["details"] for r in result.records)


def test_the_mark_is_hashed_into_the_chain() -> None:
    first = appended([post("fct_b")]).records[0]
    marked = appended([post("fct_b")], recorded={("dlv_1", 1)}).records[0]
    assert first["hash"] != marked["hash"]
    verifier = decisions.ChainVerifier()
    verifier.feed(marked)
    assert verifier.first_bad_seq is None


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 3), st.integers(1, 2)),
                max_size=30))
def test_records_equal_posts_and_one_unmarked_per_attempt(
        posts: list[tuple[int, int, int]]) -> None:
    """Posts ``(post number, delivery, attempt)``; a post number seen twice is the same fact
    delivered twice. Records = distinct posts; per attempt exactly one record is unmarked."""
    facts = [post(f"fct_{n}_{d}_{a}", f"dlv_{d}", a) for n, d, a in posts]
    records = appended(facts).records
    assert len(records) == len({f.id for f in facts})
    attempts = {(f.delivery_id, f.attempt) for f in facts}
    unmarked = [(r["delivery_id"], r["attempt"]) for r in records
                if not r["details"].get(REPEAT_KEY)]
    assert sorted(unmarked) == sorted(attempts)


@given(st.lists(st.sampled_from(["delivery.started", "delivery.attempted", "event.accepted"]),
                max_size=20))
def test_split_started_keeps_the_write_aheads_apart_in_order(kinds: list[str]) -> None:
    facts = [post(f"fct_{i}", kind=kind) for i, kind in enumerate(kinds)]
    ahead, others = decisions.split_started(facts)
    assert [f.kind for f in ahead] == ["delivery.started"] * kinds.count("delivery.started")
    assert all(f.kind != "delivery.started" for f in others)
    assert sorted(ahead + others, key=lambda f: int(f.id[4:])) == facts


def test_an_unknown_outcome_is_the_posts_record_under_the_outcomes_id() -> None:
    ahead = post("fct_a", kind="delivery.started").model_copy(
        update={"outcome": None, "details": {}})
    unknown = decisions.outcome_unknown(ahead)
    assert (unknown.id, unknown.kind, unknown.service) == ("fct_a", "delivery.attempted", "audit")
    assert (unknown.outcome, unknown.reason) == (decisions.UNKNOWN_OUTCOME,
                                                 decisions.UNKNOWN_REASON)
    assert unknown.details == {"next": "unknown", "outcome_unknown": True}
    assert (unknown.delivery_id, unknown.attempt, unknown.occurred_at) == ("dlv_1", 1, T0)
    # the real outcome arriving later is the same fact id: a duplicate, not a second record
    later = appended([post("fct_a")], existing={"fct_a"})
    assert later.records == [] and later.duplicates == 1
