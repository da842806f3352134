"""The tracing switch (shared/telemetry.py ``enabled``): OpenTelemetry's public API only, a
"no provider" answer kept for RECHECK_INTERVAL, a "yes" for good, ``refresh`` to ask again."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from shared import telemetry


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> list[trace.TracerProvider]:
    """What ``get_tracer_provider()`` answers (the last item), counting the questions."""
    answers: list[trace.TracerProvider] = [trace.ProxyTracerProvider()]
    asked: list[trace.TracerProvider] = []

    def get() -> trace.TracerProvider:
        asked.append(answers[-1])
        return answers[-1]

    monkeypatch.setattr(trace, "get_tracer_provider", get)
    monkeypatch.setattr(telemetry, "_installed", False)
    telemetry.refresh()
    return answers


def test_no_provider_is_remembered_for_a_while_then_asked_again(
        provider: list[trace.TracerProvider], monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(telemetry.time, "monotonic", lambda: clock[0])
    assert not telemetry.enabled()
    provider.append(TracerProvider())  # installed by other code
    clock[0] += telemetry.RECHECK_INTERVAL * 0.9
    assert not telemetry.enabled()  # the "no" is still remembered
    clock[0] += telemetry.RECHECK_INTERVAL * 0.2
    assert telemetry.enabled()


def test_refresh_makes_a_provider_installed_now_count_at_once(
        provider: list[trace.TracerProvider]) -> None:
    assert not telemetry.enabled()
    provider.append(TracerProvider())
    telemetry.refresh()
    assert telemetry.enabled()
    provider.append(trace.ProxyTracerProvider())  # cannot happen (installed once), but:
    assert telemetry.enabled()  # a yes is remembered for good
