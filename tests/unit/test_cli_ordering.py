"""``--ordering`` and ``--ordering-key`` of ``dihya endpoints create/update`` and how an
endpoint's order reads back (no API involved)."""

from __future__ import annotations

import argparse

import pytest

from cli.commands import endpoints
from cli.commands.endpoints import describe
from cli.i18n import Messages
from cli.main import build_parser

EN = Messages("en")


def test_create_takes_an_order_and_a_key() -> None:
    parser = build_parser(EN)
    args = parser.parse_args(["endpoints", "create", "https://h.example/x", "-e", "a.b",
                              "--ordering", "fifo", "--ordering-key", "data.user_id"])
    assert (args.ordering, args.ordering_key) == ("fifo", "data.user_id")
    plain = parser.parse_args(["endpoints", "create", "https://h", "-e", "a"])
    assert (plain.ordering, plain.ordering_key) == (None, None)


def test_update_sends_only_what_is_given_and_none_as_null(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, object]] = []

    class Ingest:
        def request(self, method: str, path: str, body: dict[str, object]) -> argparse.Namespace:
            sent.append(body)
            return argparse.Namespace(data={"id": "ep_1"})

    class Ctx:
        t = EN

        def ingest(self) -> Ingest:
            return Ingest()

        def emit(self, data: object, human: object) -> None:
            pass

    parser = build_parser(EN)
    for argv in (["--ordering", "none"], ["--ordering", "fifo", "--ordering-key", "data.k"],
                 ["--ordering-key", "none"]):
        args = parser.parse_args(["endpoints", "update", "ep_1", *argv])
        endpoints.update(Ctx(), args)  # type: ignore[arg-type]
    assert sent == [{"ordering": None}, {"ordering": "fifo", "ordering_key": "data.k"},
                    {"ordering_key": None}]
    assert "ordering" not in parser.parse_args(["endpoints", "update", "ep_1", "--enable"])


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "tzm"])
def test_describe_shows_the_order(lang: str) -> None:
    t = Messages(lang)
    base = {"id": "ep_1", "url": "https://h", "status": "enabled", "events": ["a"]}
    field = t("field.ordering")
    assert dict(describe(t, base))[field] == t("endpoint.no_ordering")
    assert dict(describe(t, {**base, "ordering": "fifo"}))[field] == t(
        "endpoint.ordering_whole")
    shown = dict(describe(t, {**base, "ordering": "fifo", "ordering_key": "data.user_id"}))
    assert "data.user_id" in shown[field]
