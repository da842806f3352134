"""``--rate-limit`` of ``dihya endpoints create/update`` and how an endpoint's limit reads back
(no API involved)."""

from __future__ import annotations

import pytest

from cli.commands.endpoints import describe
from cli.i18n import Messages
from cli.main import build_parser
from cli.values import parse_rate_limit, rate_limit_text

EN = Messages("en")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5", {"per_second": 5}), ("5/10", {"per_second": 5, "burst": 10}),
     (" 0.5/3 ", {"per_second": 0.5, "burst": 3}), ("none", None), ("NONE", None)],
)
def test_parse_rate_limit(text: str, expected: dict[str, float] | None) -> None:
    assert parse_rate_limit(text) == expected


@pytest.mark.parametrize("text", ["", "fast", "5/", "/5", "5/x", "5/1.5", "0", "-1", "5/0",
                                  "nan", "inf", "5/10/2"])
def test_parse_rate_limit_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="expected"):
        parse_rate_limit(text)


def test_create_and_update_take_a_rate_limit() -> None:
    parser = build_parser(EN)
    args = parser.parse_args(["endpoints", "create", "https://h.example/x", "-e", "a.b",
                              "--rate-limit", "5/10"])
    assert args.rate_limit == {"per_second": 5, "burst": 10}
    assert parser.parse_args(["endpoints", "create", "https://h", "-e", "a"]).rate_limit is None
    assert "rate_limit" not in parser.parse_args(["endpoints", "update", "ep_1", "--enable"])
    args = parser.parse_args(["endpoints", "update", "ep_1", "--rate-limit", "none"])
    assert args.rate_limit is None  # sent as null: the limit is removed


def test_a_bad_rate_limit_is_a_usage_error_in_the_users_language(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser(Messages("fr")).parse_args(
            ["endpoints", "create", "https://h", "-e", "a", "--rate-limit", "vite"])
    assert exit_.value.code == 2
    assert "N/RAFALE" in capsys.readouterr().err


@pytest.mark.parametrize("lang", ["en", "fr", "ar", "tzm"])
def test_describe_shows_the_limit(lang: str) -> None:
    t = Messages(lang)
    base = {"id": "ep_1", "url": "https://h", "status": "enabled", "events": ["a"]}
    rows = dict(describe(t, {**base, "rate_limit": {"per_second": 2.5, "burst": 4}}))
    assert rows[t("field.rate_limit")] == t("endpoint.rate_limit_text", rate="2.5", burst="4")
    assert "2.5" in rows[t("field.rate_limit")] and "4" in rows[t("field.rate_limit")]
    assert dict(describe(t, base))[t("field.rate_limit")] == t("endpoint.no_rate_limit")
    assert rate_limit_text({"per_second": 5.0, "burst": 1}) == ("5", "1")
