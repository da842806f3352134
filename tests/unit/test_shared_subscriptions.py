"""Topic-pattern matching of endpoint subscriptions (RabbitMQ topic semantics), the contract
in :mod:`shared.subscriptions` that ingest applies and the CLI predicts with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.subscriptions import matches, valid_pattern

WORDS = st.sampled_from(["a", "b", "c", "template", "x_y-1"])
TYPES = st.lists(WORDS, min_size=1, max_size=5)
PATTERN_PARTS = st.lists(st.one_of(WORDS, st.just("*"), st.just("#")), min_size=1, max_size=5)


def oracle(pattern: list[str], words: list[str]) -> bool:
    """Straightforward recursive reading of the topic-exchange rules (exponential, but clear)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(oracle(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and oracle(rest, words[1:])


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("template.created", "template.created", True),
        ("template.created", "template.deleted", False),
        ("template.created", "template.created.v2", False),
        ("incident.*", "incident.security", True),
        ("incident.*", "incident", False),
        ("incident.*", "incident.security.high", False),
        ("*", "incident", True),
        ("*", "incident.security", False),
        ("#", "anything.at.all", True),
        ("#", "one", True),
        ("incident.#", "incident", True),
        ("incident.#", "incident.security.high", True),
        ("incident.#", "incidents.security", False),
        ("#.high", "incident.security.high", True),
        ("#.high", "high", True),
        ("#.high", "high.low", False),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("*.*", "a.b", True),
        ("*.#.*", "a", False),
        ("*.#.*", "a.b", True),
        ("#.#", "a.b.c", True),
        ("a.*.#", "a", False),
    ],
)
def test_examples(pattern: str, event_type: str, expected: bool) -> None:
    assert valid_pattern(pattern)
    assert matches(pattern, event_type) is expected


@given(PATTERN_PARTS, TYPES)
def test_agrees_with_the_recursive_definition(pattern: list[str], words: list[str]) -> None:
    assert matches(".".join(pattern), ".".join(words)) is oracle(pattern, words)


@given(TYPES)
def test_a_literal_pattern_matches_exactly_its_type(words: list[str]) -> None:
    event_type = ".".join(words)
    assert matches(event_type, event_type)
    assert not matches(event_type + ".more", event_type)
    assert not matches(event_type, event_type + ".more")


@given(TYPES)
def test_hash_alone_matches_everything(words: list[str]) -> None:
    assert matches("#", ".".join(words))


@given(TYPES, st.data())
def test_a_star_can_stand_for_any_one_word(words: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words) - 1))
    pattern = [*words[:i], "*", *words[i + 1:]]
    assert matches(".".join(pattern), ".".join(words))


@given(TYPES, st.data())
def test_a_hash_can_stand_for_any_run_of_words(words: list[str], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(words)))
    j = data.draw(st.integers(i, len(words)))
    pattern = [*words[:i], "#", *words[j:]]  # the run may be empty
    assert matches(".".join(pattern), ".".join(words))


@given(TYPES, st.integers(1, 5))
def test_stars_count_words(words: list[str], n: int) -> None:
    assert matches(".".join(["*"] * n), ".".join(words)) is (len(words) == n)


def test_many_hashes_do_not_backtrack_exponentially() -> None:
    pattern = ".".join(["#"] * 40 + ["z"])
    assert not matches(pattern, ".".join(["a"] * 60))


@pytest.mark.parametrize(
    "pattern", ["", "Template.created", "a..b", ".a", "a.", "a.*b", "a.#b", "a b", "é"]
)
def test_malformed_patterns_are_refused(pattern: str) -> None:
    assert not valid_pattern(pattern)
