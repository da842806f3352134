"""The one retry-schedule parser (:mod:`shared.schedules`): the deliverer's settings and the
CLI's ``--retry-schedule`` read the same text the same way, except a bare number."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli.values import parse_schedule as cli_schedule
from shared.schedules import UNIT_MS, parse_schedule


def test_units_and_empty() -> None:
    assert parse_schedule("5s,5m,30m,2h") == (5_000, 300_000, 1_800_000, 7_200_000)
    assert parse_schedule("200ms, 400ms,1.5s") == (200, 400, 1500)
    assert parse_schedule("") == ()


@pytest.mark.parametrize("bad", ["5", "5d", "s", "0s", "5s,,5s", "-1s"])
def test_a_setting_must_name_its_unit_and_be_positive(bad: str) -> None:
    with pytest.raises(ValueError, match="bad delay"):
        parse_schedule(bad)


def test_a_bare_number_takes_the_unit_the_caller_names() -> None:
    assert parse_schedule("10,60,1.5", bare_unit="s") == (10_000, 60_000, 1_500)
    assert parse_schedule("10,2m", bare_unit="ms") == (10, 120_000)
    with pytest.raises(ValueError, match="positive"):
        parse_schedule("0", bare_unit="s")


DELAYS = st.lists(st.tuples(st.integers(1, 10_000), st.sampled_from(sorted(UNIT_MS))),
                  min_size=1, max_size=8)


@given(DELAYS)
def test_the_cli_reads_a_schedule_as_the_deliverer_does(delays: list[tuple[int, str]]) -> None:
    """Same text, same delays: the CLI's seconds are the deliverer's milliseconds / 1000."""
    text = ",".join(f"{n}{unit}" for n, unit in delays)
    seconds = cli_schedule(text)
    assert seconds is not None
    assert [round(s * 1000) for s in seconds] == list(parse_schedule(text))
