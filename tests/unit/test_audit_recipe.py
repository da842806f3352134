"""The verification recipe of services/audit/README.md, run exactly as written there: plain
Python with ``cryptography`` alone, on an untouched log and on each tampering — and it agrees
with the service's offline verifier."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared import anchor
from tests.unit.test_audit_anchor import SIGNER, Heads, chain

README = Path(__file__).resolve().parents[2] / "services" / "audit" / "README.md"


def recipe() -> str:
    text = README.read_text()
    block = text.split("<!-- recipe:start -->")[1].split("<!-- recipe:end -->")[0]
    match = re.search(r"```python\n(.*?)```", block, re.DOTALL)
    assert match is not None
    return match.group(1)


def test_the_recipe_is_short_and_needs_only_the_stdlib_and_cryptography() -> None:
    code = recipe()
    assert len(code.strip().splitlines()) <= 50
    imported = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported == {"base64", "hashlib", "json", "sys", "cryptography"}


def run(tmp_path: Path, heads: list[dict[str, Any]], records: list[dict[str, Any]],
        extra_head_lines: Sequence[bytes] = ()) -> tuple[int, str]:
    script = tmp_path / "verify.py"
    script.write_text(recipe())
    (tmp_path / "heads.jsonl").write_bytes(
        b"".join(anchor.canonical(h) + b"\n" for h in heads) + b"".join(extra_head_lines))
    (tmp_path / "export.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(tmp_path / "heads.jsonl"), SIGNER.public_b64,
         str(tmp_path / "export.jsonl")],
        capture_output=True, text=True, timeout=60, check=False)
    ours = anchor.verify(heads, SIGNER.public, records)
    assert (done.returncode == 0) == ours.ok, (done.stdout, done.stderr, ours)
    return done.returncode, done.stdout + done.stderr


def signed(records: list[dict[str, Any]], *seqs: int, **options: Any) -> list[dict[str, Any]]:
    heads = Heads()
    for seq in seqs:
        heads.sign(records, seq, **options)
    return heads.heads


def test_an_untouched_log_passes(tmp_path: Path) -> None:
    records = chain(30)
    code, out = run(tmp_path, signed(records, 10, 20, 30), records,
                    [anchor.canonical(SIGNER.sign(seq=31, head_hash="x", records=0, time="t",
                                                  previous_head_hash="y",
                                                  checkpoint=None))[:30]])
    assert code == 0 and "OK: 30 records anchored by 3 signed heads" in out


def test_a_log_purged_behind_an_attested_checkpoint_passes(tmp_path: Path) -> None:
    records = chain(30)
    checkpoint = {"last_seq": 10, "last_hash": records[9]["hash"]}
    heads = signed(records, 20, 30, checkpoint=checkpoint)
    assert run(tmp_path, heads, records[10:])[0] == 0


def rewritten(records: list[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    forged = [dict(r) for r in records]
    forged[seq - 1]["outcome"] = "refused"
    prev = forged[seq - 2]["hash"]
    for record in forged[seq - 1:]:
        record["prev_hash"] = prev
        record["hash"] = prev = anchor.record_hash(prev, record)
    return forged


@pytest.mark.parametrize(("tamper", "message"), [
    ("truncated", "truncated"),
    ("rewritten", "rewritten at or before seq 20"),
    ("edited", "record 15 rewritten"),
    ("forged_append", "forged append at seq 31"),
    ("forged_checkpoint", "log starts at seq 11, unattested"),
    ("deleted", "broken at 17"),  # the record after the gap
    ("bad_signature", "InvalidSignature"),
    ("head_removed", "head chain broken at head seq 30"),
])
def test_each_tampering_fails(tmp_path: Path, tamper: str, message: str) -> None:
    records = chain(30)
    signer = Heads()
    signer.sign(records, 10)
    signer.sign(records, 20)
    signer.sign(records, 30, after=30)  # the newest head: 30 s after its record
    heads = signer.heads
    if tamper == "truncated":
        records = records[:20]
    elif tamper == "rewritten":
        records = rewritten(records, 15)
    elif tamper == "edited":
        records[14] = {**records[14], "outcome": "refused"}
    elif tamper == "forged_append":
        records += chain(1, start=30, prev=records[-1]["hash"])  # dated before the last head
    elif tamper == "forged_checkpoint":
        records = records[10:]
    elif tamper == "deleted":
        del records[15]
    elif tamper == "bad_signature":
        heads[1] = {**heads[1], "records": 99}
    elif tamper == "head_removed":
        del heads[1]
    code, out = run(tmp_path, heads, records)
    assert code != 0 and message in out, out
