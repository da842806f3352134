"""Reading parked messages, keeping histories, resending, holding (ingest's pure logic)."""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
from hypothesis import given
from hypothesis import strategies as st

from services.ingest.decisions import (
    DeadLetter,
    Endpoint,
    Unreadable,
    absorb,
    broker_parked_fact,
    complete,
    held_fact,
    hold,
    json_safe,
    last_attempt,
    merge_history,
    parked_message_id,
    plan,
    read_dead_letter,
    read_dead_letters,
    resend,
    retry_fact,
    seen_recently,
)
from shared import topology
from shared.contracts import (
    AttemptRecord,
    DeliveryJob,
    DeliveryJobBatch,
    Event,
    SignedDelivery,
    encode,
)

T0 = datetime(2025, 5, 20, 12, 0, tzinfo=UTC)
EVENT = Event(id="evt_1", event="order.paid", timestamp=T0, data={"n": 1})


def record(n: int, status: int | None = 500, minutes: int | None = None) -> AttemptRecord:
    return AttemptRecord(attempt=n, at=T0 + timedelta(minutes=n if minutes is None else minutes),
                         outcome="failed", status_code=status, duration_ms=12.5,
                         error=None if status else "timeout")


def job(attempt: int = 4, history: tuple[AttemptRecord, ...] | None = None) -> DeliveryJob:
    hist = tuple(record(n) for n in range(1, attempt)) if history is None else history
    return DeliveryJob(delivery_id="dlv_1", endpoint_id="ep_1", url="https://old.example/h",
                       event=EVENT, attempt=attempt, history=hist)


def test_a_parked_delivery_job_is_read_with_its_reason_and_error() -> None:
    parked = job()
    read = read_dead_letter(encode(parked), {topology.REASON_HEADER: b"exhausted",
                                             topology.ERROR_HEADER: "HTTP 500"})
    assert read == DeadLetter(parked, "exhausted", "HTTP 500", broker_parked=False)


def test_a_signed_delivery_parked_by_the_broker_yields_its_job() -> None:
    signed = SignedDelivery(job=job(2), body="{}", headers={"webhook-id": "dlv_1"}, signed_at=T0)
    read = read_dead_letter(encode(signed), {"x-death": [{"count": 10}]})
    assert isinstance(read, DeadLetter)
    assert read.job == job(2) and read.reason == "delivery_limit" and read.broker_parked


def test_anything_else_is_unreadable_with_a_reason() -> None:
    garbage = read_dead_letter(b"\xff not json", {topology.REASON_HEADER: "invalid_message"})
    assert isinstance(garbage, Unreadable)
    assert garbage.reason == "invalid_message" and not garbage.broker_parked
    assert garbage.error.startswith("not a delivery job")
    other = read_dead_letter(orjson.dumps({"event": "a.b", "data": {}}), {})
    assert isinstance(other, Unreadable) and other.reason == "unknown"
    poison = read_dead_letter(b"{}", {"x-death": []})
    assert isinstance(poison, Unreadable) and poison.broker_parked


def test_a_batch_the_broker_parked_yields_each_of_its_jobs() -> None:
    jobs = [job(1).model_copy(update={"delivery_id": f"dlv_{n}"}) for n in range(3)]
    body = encode(DeliveryJobBatch(jobs=jobs))
    read = read_dead_letters(body, {"x-death": [{"count": 10}]})
    assert read == [DeadLetter(j, "delivery_limit", None, broker_parked=True) for j in jobs]
    facts = [broker_parked_fact("q", one, body, T0, of_batch=True) for one in read]
    assert [f.delivery_id for f in facts] == ["dlv_0", "dlv_1", "dlv_2"]
    assert len({f.id for f in facts}) == 3  # one fact per job, each stable
    assert facts[0].id == broker_parked_fact("q", read[0], body, T0, of_batch=True).id
    # a single job reads as before, as a list of one
    assert read_dead_letters(encode(jobs[0]), {}) == [read_dead_letter(encode(jobs[0]), {})]


def test_a_batch_that_cannot_be_stored_job_by_job_is_kept_whole() -> None:
    odd = job(1).model_copy(update={"delivery_id": "not an id!"})
    whole = read_dead_letters(encode(DeliveryJobBatch(jobs=[job(1), odd])), {"x-death": []})
    assert isinstance(whole, Unreadable) and whole.broker_parked
    assert "delivery_id is not an id" in whole.error
    empty = read_dead_letters(orjson.dumps({"type": "dihya.delivery_job_batch.v1",
                                            "jobs": []}), {topology.REASON_HEADER: "x"})
    assert isinstance(empty, Unreadable) and empty.error.startswith("not a batch")
    assert isinstance(read_dead_letters(b"\xff", {}), Unreadable)


def test_parked_ids_are_stable_per_message() -> None:
    a = parked_message_id("q", "m1", b"x")
    assert a == parked_message_id("q", "m1", b"y")  # same message id: a redelivery
    assert a != parked_message_id("q2", "m1", b"x") != parked_message_id("q", "m2", b"x")
    assert parked_message_id("q", None, b"x") == parked_message_id("q", None, b"x")
    assert parked_message_id("q", None, b"x") != parked_message_id("q", None, b"z")


def test_headers_become_plain_json() -> None:
    headers = {"x-death": [{"count": 3, "time": dt.datetime(2025, 5, 20, tzinfo=UTC),
                            "queue": b"dihya.deliverer.jobs"}],
               "n": Decimal("1.5"), "f": float("nan"), "ok": True, "b": bytearray(b"\xff")}
    safe = json_safe(headers)
    assert safe == {"x-death": [{"count": 3, "time": "2025-05-20T00:00:00+00:00",
                                 "queue": "dihya.deliverer.jobs"}],
                    "n": "1.5", "f": "nan", "ok": True, "b": "\ufffd"}
    orjson.dumps(safe)


def test_resend_continues_the_attempt_count_and_keeps_the_history() -> None:
    parked = job(9)  # attempts 1..8 made, the deliverer parked it with attempt = 9
    again = resend(parked, "https://new.example/h")
    assert again.attempt == 9 and again.history == parked.history
    assert again.url == "https://new.example/h" and again.delivery_id == parked.delivery_id
    never = job(1, ())  # the signer parked it before any attempt (no secret)
    assert resend(never, never.url).attempt == 1
    # the endpoint's current retry schedule goes with it (None: the deployment's)
    own = parked.model_copy(update={"retry_schedule_ms": (1000,)})
    assert resend(own, own.url, (5000, 60_000)).retry_schedule_ms == (5000, 60_000)
    assert resend(own, own.url, None).retry_schedule_ms is None
    assert last_attempt(job(3, ())) == 2


def test_a_delivery_failing_again_keeps_every_attempt() -> None:
    first = job(4)  # attempts 1..3
    second = job(5, (*first.history, record(4)))  # retried as 4, failed again
    kept = absorb(first, second)
    assert [r.attempt for r in kept.history] == [1, 2, 3, 4] and kept.attempt == 5
    assert absorb(kept, second) == kept  # the same park redelivered: no change
    # the second episode's job lost its past: the stored history is kept
    lone = job(5, (record(4),))
    assert [r.attempt for r in absorb(first, lone).history] == [1, 2, 3, 4]
    assert absorb(None, lone) == lone


@given(st.lists(st.tuples(st.integers(1, 20), st.integers(0, 50)), max_size=15),
       st.lists(st.tuples(st.integers(1, 20), st.integers(0, 50)), max_size=15))
def test_merge_history_is_a_sorted_union(a: list[tuple[int, int]],
                                         b: list[tuple[int, int]]) -> None:
    old = [record(n, minutes=m) for n, m in a]
    new = [record(n, minutes=m) for n, m in b]
    merged = merge_history(old, new)
    keys = [(r.attempt, r.at) for r in merged]
    assert keys == sorted(set(keys)) == sorted({(r.attempt, r.at) for r in old + new})
    assert merge_history(merged, new) == merged


def test_hold_keeps_what_plan_leaves_out_for_disabled_endpoints() -> None:
    event = complete(Event(id="evt_h", event="order.paid", data={}), message_id=None, now=T0)
    endpoints = [Endpoint("ep_on", "https://a/", ("order.*",)),
                 Endpoint("ep_off", "https://b/", ("order.#",), "disabled", "gone"),
                 Endpoint("ep_off_other", "https://c/", ("user.*",), "disabled", "failing")]
    jobs = plan(event, endpoints)
    held = hold(event, endpoints)
    assert [j.endpoint_id for j in jobs] == ["ep_on"]
    assert [(h.job.endpoint_id, h.disabled_reason) for h in held] == [("ep_off", "gone")]
    assert held[0].job.attempt == 1 and held[0].job.event == event
    fact = held_fact(held[0], T0)
    assert fact.kind == "delivery.held" and fact.delivery_id == held[0].job.delivery_id
    assert fact.id == held_fact(held[0], T0 + timedelta(hours=1)).id  # stable on redelivery
    assert fact.reason == "endpoint_disabled" and fact.details == {"disabled_reason": "gone"}


def test_retry_and_poison_facts() -> None:
    again = resend(job(9), "https://new.example/h")
    fact = retry_fact(again, actor="tok_1", via="recover", previous="held",
                      reason="endpoint_disabled", now=T0)
    assert fact.kind == "delivery.retry_requested" and fact.actor == "tok_1"
    assert fact.attempt == 9 and fact.delivery_id == "dlv_1"
    assert fact.details == {"via": "recover", "was": "held"}
    dead = read_dead_letter(b"junk", {"x-death": []})
    parked = broker_parked_fact("q.dead", dead, b"junk", T0)
    assert parked.kind == "delivery.parked" and parked.reason == "delivery_limit"
    assert parked.id == broker_parked_fact("q.dead", dead, b"junk", T0).id
    assert parked.details == {"queue": "q.dead"}


def test_seen_recently_honours_the_window() -> None:
    assert seen_recently(T0, T0 + timedelta(seconds=59), 60)
    assert not seen_recently(T0, T0 + timedelta(seconds=60), 60)
    assert not seen_recently(None, T0, 60)
    assert not seen_recently(T0, T0, 0)  # 0 disables deduplication


def test_a_job_whose_ids_could_never_be_keys_is_kept_verbatim() -> None:
    odd = job().model_copy(update={"delivery_id": "dlv_" + "x" * 80})
    read = read_dead_letter(encode(odd), {topology.REASON_HEADER: "exhausted",
                                          topology.ERROR_HEADER: b"bad \x00 byte"})
    assert isinstance(read, Unreadable) and read.reason == "exhausted"
    assert read.error == "bad \ufffd byte"
    nul = job().model_copy(update={"endpoint_id": "ep_\x00"})
    assert isinstance(read_dead_letter(encode(nul), {}), Unreadable)
