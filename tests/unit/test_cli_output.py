"""What the CLI prints (tables, progress, errors) and the exit codes it leaves with."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cli import output
from cli.commands.audit import Tally, target
from cli.config import Profile, resolve
from cli.context import Ctx
from cli.errors import ApiError, Exit, UnreachableError, exit_code
from cli.i18n import Messages
from cli.main import explain, explain_unreachable, run

EN, FR = Messages("en"), Messages("fr")


# -- exit codes -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("status", "code"),
    [(400, Exit.API_ERROR), (401, Exit.AUTH), (403, Exit.AUTH), (404, Exit.NOT_FOUND),
     (409, Exit.API_ERROR), (413, Exit.API_ERROR), (415, Exit.API_ERROR),
     (422, Exit.API_ERROR), (500, Exit.UNAVAILABLE), (502, Exit.UNAVAILABLE),
     (503, Exit.UNAVAILABLE)],
)
def test_http_statuses_map_to_documented_exit_codes(status: int, code: Exit) -> None:
    assert exit_code(status) == code
    assert ApiError("ingest", status, "c", "m").exit == code


def test_exit_code_values_are_the_documented_ones() -> None:
    assert [int(e) for e in Exit] == [0, 1, 2, 3, 4, 5, 6, 130]


def test_the_cli_page_documents_every_exit_code() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    section = page.split("# CLI", 1)[1]
    for code in Exit:
        assert f"| {int(code)} |" in section, code


def _settings(token: str | None) -> object:
    return resolve(ingest_url=None, audit_url=None, token=token, timeout=None, env={},
                   profile=Profile(), t=EN)


def test_401_without_a_token_says_how_to_give_one() -> None:
    text = explain(EN, ApiError("ingest", 401, "unauthorized", "Send a valid token."),
                   _settings(None))  # type: ignore[arg-type]
    assert "DIHYA_TOKEN" in text and "--token" in text and "config.toml" in text


def test_401_with_a_token_names_where_it_came_from_but_not_the_token() -> None:
    text = explain(EN, ApiError("audit", 401, "unauthorized", "Send a valid token."),
                   _settings("dihya_secret_value"))  # type: ignore[arg-type]
    assert "--token" in text and "audit" in text
    assert "dihya_secret_value" not in text


def test_403_relays_the_roles_needed() -> None:
    text = explain(FR, ApiError("ingest", 403, "forbidden",
                                "Role 'viewer' may not do this; it needs: admin."), None)
    assert "it needs: admin" in text and "dihya tokens create --role" in text
    assert text.startswith("L'API ingest a refusé")


def test_422_lists_each_bad_field() -> None:
    exc = ApiError("ingest", 422, "validation_failed", "The request body is not valid.",
                   [{"field": "url", "message": "must be an http:// or https:// URL"},
                    {"field": "events", "message": "too short"}])
    text = explain(EN, exc, None)
    assert text.splitlines()[1:] == ["  - url: must be an http:// or https:// URL",
                                     "  - events: too short"]


def test_server_errors_say_to_retry() -> None:
    text = explain(EN, ApiError("ingest", 503, "broker_unavailable",
                                "The endpoint was not deleted, but … Retry."), None)
    assert "Try again" in text and "not deleted" in text
    assert "nothing was changed" not in text.lower()  # the server's text says what was
    assert "ingest service's log" in explain(EN, ApiError("ingest", 500, "internal", "x"),
                                             None)


def test_unreachable_says_how_to_start_or_point_at_the_service() -> None:
    text = explain_unreachable(EN, UnreachableError("audit", "http://h:1", "refused"))
    assert "http://h:1" in text and "dihya dev" in text
    assert "--audit-url" in text and "DIHYA_AUDIT_URL" in text


def test_an_unreachable_api_exits_5(unused_port: int) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run(["--ingest-url", f"http://127.0.0.1:{unused_port}", "--lang", "ar",
                "endpoints", "list"], env={"HOME": "/nonexistent"}, stdout=out, stderr=err)
    assert code == Exit.UNAVAILABLE
    assert "تعذر الوصول إلى واجهة ingest" in err.getvalue()
    assert out.getvalue() == ""


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- tables --------------------------------------------------------------------------------

def test_width_counts_terminal_columns() -> None:
    assert output.width("abc") == 3
    assert output.width("ⵜⴰⵙⴰⵔⵓⵜ") == 7  # Tifinagh: one column per letter
    assert output.width("مُرحبا") == 5  # the damma takes no column
    assert output.width("日本") == 4
    assert output.width("a\u200fb") == 2  # a right-to-left mark takes none


def test_table_aligns_mixed_scripts() -> None:
    text = output.table(["ID", "ⴰⴷⴷⴰⴷ"], [["ep_1", "ⵜⵜⵓⵙⵙⵔⵖ"], ["ep_22", None]])
    lines = text.splitlines()
    assert lines[0] == "ID     ⴰⴷⴷⴰⴷ"
    assert lines[1] == "─────  ───────"
    assert lines[2] == "ep_1   ⵜⵜⵓⵙⵙⵔⵖ"
    assert lines[3] == "ep_22  -"


def test_cells() -> None:
    assert output.cell(["a", "b"]) == "a, b"
    assert output.cell([]) == "-"
    assert output.cell(2.345) == "2.3"
    assert output.cell({"a": 1}) == '{"a":1}'
    assert output.clip("x" * 100, 10) == "x" * 9 + "…"


@given(st.text(min_size=0, max_size=80), st.integers(min_value=2, max_value=60))
def test_clip_never_exceeds_the_limit(text: str, limit: int) -> None:
    clipped = output.clip(text, limit)
    assert output.width(clipped) <= limit
    assert clipped == text or clipped.endswith("…")


def test_pairs_and_times() -> None:
    assert output.pairs([("id", "ep_1"), ("status", "enabled")]) == \
        "id      ep_1\nstatus  enabled"
    assert output.short_time("2025-05-20T12:00:00.123456Z") == "2025-05-20 12:00:00Z"
    assert output.short_time(None) == "-"
    assert output.human_bytes(512) == "512 B"
    assert output.human_bytes(1536) == "1.5 KiB"


def test_json_output_is_the_api_object() -> None:
    data = {"id": "ep_1", "events": ["a"], "description": None}
    assert orjson.loads(output.dumps(data)) == data


def test_emit_chooses_json_or_human() -> None:
    out = io.StringIO()
    ctx = Ctx(t=EN, settings=_settings(None), out=out, json=True)  # type: ignore[arg-type]
    ctx.emit({"a": 1}, lambda: ctx.say("human"))
    assert orjson.loads(out.getvalue()) == {"a": 1}
    ctx.json = False
    ctx.emit({"a": 1}, lambda: ctx.say("human"))
    assert out.getvalue().endswith("human\n")


# -- progress ------------------------------------------------------------------------------

def test_progress_bar_draws_and_throttles() -> None:
    stream = io.StringIO()
    now = [0.0]
    bar = output.Progress(stream, lambda n: f"{n} B", clock=lambda: now[0])
    bar.update(0.5, 10)
    bar.update(0.6, 20)  # within 0.1 s: not drawn
    now[0] = 1.0
    bar.update(None, 30)
    bar.finish(1.0, 40)
    assert bar.drawn == 3
    text = stream.getvalue()
    assert "[████████████░░░░░░░░░░░░]  50%  10 B" in text
    assert "\r30 B\x1b[K" in text
    assert "[████████████████████████] 100%  40 B" in text and text.endswith("\n")


def _jsonl(seqs: list[int]) -> bytes:
    return b"".join(orjson.dumps({"seq": s, "kind": "x", "details": {"seq": 0}}) + b"\n"
                    for s in seqs)


@given(st.integers(min_value=1, max_value=50), st.data())
def test_tally_counts_records_across_any_chunking(count: int, data: st.DataObject) -> None:
    body = _jsonl(list(range(1, count + 1)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    tally = Tally("jsonl")
    for start, end in zip([0, *cuts], [*cuts, len(body)], strict=True):
        tally.feed(body[start:end])
    assert (tally.records, tally.last_seq) == (count, count)


def test_tally_reads_csv_and_skips_its_header() -> None:
    tally = Tally("csv")
    tally.feed(b"seq,id,kind\r\n7,fct_1,a\r\n9,fct")
    assert (tally.records, tally.last_seq) == (1, 7)
    tally.feed(b"_2,b\r\n")
    assert (tally.records, tally.last_seq) == (2, 9)
    assert tally.fraction(7, 9) == 1.0
    assert tally.fraction(None, 9) is None
    assert tally.fraction(1, None) is None


def test_tally_fraction_goes_from_first_to_head() -> None:
    tally = Tally("jsonl")
    assert tally.fraction(11, 20) == 0.0
    tally.feed(_jsonl([11, 15]))
    assert tally.fraction(11, 20) == 0.5


def test_export_target_is_renamed_only_when_complete(tmp_path: Path) -> None:
    ctx = Ctx(t=EN, settings=_settings(None))  # type: ignore[arg-type]
    final = tmp_path / "audit.jsonl"

    def cut_short() -> None:
        with target(ctx, str(final)) as fh:
            fh.write(b"partial")
            raise UnreachableError("audit", "http://h", "the transfer was cut short")

    with pytest.raises(UnreachableError):
        cut_short()
    assert list(tmp_path.iterdir()) == []
    with target(ctx, str(final)) as fh:
        fh.write(b"whole\n")
    assert final.read_bytes() == b"whole\n"
    assert [p.name for p in tmp_path.iterdir()] == ["audit.jsonl"]
