"""The topology document committed for operators matches the one the services declare."""

from __future__ import annotations

import json
from pathlib import Path

from shared import topology

DEFINITIONS = Path(__file__).resolve().parents[2] / "deploy" / "rabbitmq" / "definitions.json"


def test_every_work_queue_is_quorum_with_safe_dead_lettering() -> None:
    for q in topology.WORK_QUEUES:
        args = q.arguments
        assert args["x-queue-type"] == "quorum"
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert args["x-overflow"] == "reject-publish"  # required by at-least-once
        assert args["x-dead-letter-routing-key"] == q.name
        assert args["x-delivery-limit"] >= 1


def test_every_work_queue_has_a_parking_queue() -> None:
    names = {q.name for q in topology.queues()}
    for q in topology.WORK_QUEUES:
        assert topology.dead_queue(q.name) in names


def test_retry_tiers_dead_letter_back_to_the_signer() -> None:
    tiers = topology.retry_queues((5000, 300000, 5000))
    assert [q.arguments["x-message-ttl"] for q in tiers] == [6250, 375000]  # delay + headroom
    for q in tiers:
        assert q.arguments["x-dead-letter-exchange"] == topology.WORK_EXCHANGE
        assert q.arguments["x-dead-letter-routing-key"] == topology.SIGN


def test_defer_tiers_dead_letter_back_to_the_deliverer() -> None:
    tiers = topology.defer_queues((1000, 2000, 1000))
    assert [q.name for q in tiers] == ["dihya.defer.1000ms", "dihya.defer.2000ms"]
    assert [q.arguments["x-message-ttl"] for q in tiers] == [1250, 2500]
    for q in tiers:
        assert q.bindings == ((topology.RETRY_EXCHANGE, q.name),)
        assert q.arguments["x-dead-letter-exchange"] == topology.WORK_EXCHANGE
        assert q.arguments["x-dead-letter-routing-key"] == topology.DELIVER
        assert q.arguments["x-dead-letter-strategy"] == "at-least-once"
    # a retry tier and a defer tier of the same delay are two queues
    assert not {q.name for q in tiers} & {q.name for q in topology.retry_queues((1000,))}


def test_committed_definitions_are_current() -> None:
    committed = json.loads(DEFINITIONS.read_text())
    assert committed == json.loads(json.dumps(topology.definitions(**_committed_args()))), (
        "regenerate with `python -m shared.topology > deploy/rabbitmq/definitions.json`"
    )


def _committed_args() -> dict[str, object]:
    return {"retry_delays_ms": topology.DEFAULT_RETRY_DELAYS_MS,
            "defer_delays_ms": topology.DEFAULT_DEFER_DELAYS_MS}


def test_the_deliverer_defaults_are_the_published_tiers() -> None:
    from services.deliverer.settings import Settings

    defaults = Settings()
    assert defaults.retry_delays_ms == topology.DEFAULT_RETRY_DELAYS_MS
    assert defaults.defer_delay_ms == topology.DEFAULT_DEFER_MS
    assert defaults.defer_delays_ms == topology.DEFAULT_DEFER_DELAYS_MS
