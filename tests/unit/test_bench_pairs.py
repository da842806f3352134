"""The benchmark's ratio is judged on the median of interleaved saturation pairs."""

from __future__ import annotations

from typing import Any

from bench.report import saturation_pairs


def _sat(target: str, dps: float, pair: int | None = None) -> dict[str, Any]:
    phase: dict[str, Any] = {"target": target, "mode": "admitted", "throughput_dps": dps}
    if pair is not None:
        phase["pair"] = pair
    return phase


def test_pairs_match_each_repeat_with_its_own_partner() -> None:
    results = {"phases": [
        _sat("raw", 900.0), {"target": "raw", "mode": "paced", "throughput_dps": 450.0},
        _sat("dihya-amqp", 630.0), _sat("dihya-http", 400.0),
        _sat("dihya-amqp", 500.0, 1), _sat("raw", 1000.0, 1),
        _sat("raw", 800.0, 2), _sat("dihya-amqp", 640.0, 2),
        _sat("raw", 700.0, 3),  # its partner never ran: no pair
    ]}
    pairs = saturation_pairs(results)
    assert [(p["pair"], p["raw_dps"], p["dihya_dps"], p["ratio"]) for p in pairs] == [
        (0, 900.0, 630.0, 0.7), (1, 1000.0, 500.0, 0.5), (2, 800.0, 640.0, 0.8)]


def test_a_run_without_repeats_is_one_pair() -> None:
    results = {"phases": [_sat("raw", 900.0), _sat("dihya-amqp", 450.0)]}
    assert [p["ratio"] for p in saturation_pairs(results)] == [0.5]
