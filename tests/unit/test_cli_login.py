"""``dihya login`` against a small ingest server on 127.0.0.1: the token is checked with
``GET /v1/me``, then saved in a profile readable by its owner only, the rest of the file kept."""

from __future__ import annotations

import asyncio
import io
import stat
import tomllib
from pathlib import Path

from aiohttp import web

from cli.errors import Exit
from cli.main import run
from tests.unit.test_cli_client import Serve, server

__all__ = ["server"]  # the fixture, used by name


async def login(tmp_path: Path, *argv: str, stdin: str = "", **env: str
                ) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, ["login", *argv],
                                   env={"HOME": str(tmp_path), **env},
                                   stdout=out, stderr=err, stdin=io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


async def me_server(server: Serve) -> str:
    async def me(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok_good":
            return web.json_response({"error": {"code": "unauthorized",
                                                "message": "Unknown token."}}, status=401)
        return web.json_response({"token_id": "tok_1", "role": "admin"})

    return await server(("GET", "/v1/me", me))


async def test_login_writes_a_private_profile_and_keeps_the_others(
        server: Serve, tmp_path: Path) -> None:
    url = await me_server(server)
    config = tmp_path / ".config" / "dihya" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text('# my laptop\ndefault_profile = "prod"\n\n[profiles.prod]\n'
                      'ingest_url = "https://dihya.example"  # production\n')
    config.chmod(0o644)

    code, out, err = await login(tmp_path, "--profile", "local", "--ingest-url", url,
                                 stdin="tok_good\n")
    assert code == Exit.OK, err
    assert "token tok_1 (role admin)" in out and "'local'" in out
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    text = config.read_text()
    assert "# my laptop" in text and "# production" in text, "comments kept"
    data = tomllib.loads(text)
    assert data["default_profile"] == "prod", "the default stays unless --default"
    assert data["profiles"]["prod"] == {"ingest_url": "https://dihya.example"}
    assert data["profiles"]["local"] == {"ingest_url": url, "audit_url": "http://127.0.0.1:8083",
                                         "token": "tok_good"}

    # the saved profile is then used: no token in the environment, no warning
    out_, err_ = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, ["--profile", "local", "endpoints", "list"],
                                   env={"HOME": str(tmp_path)}, stdout=out_, stderr=err_)
    assert "other users may read it" not in err_.getvalue()


async def test_a_fresh_login_creates_the_file_as_the_default_profile(
        server: Serve, tmp_path: Path) -> None:
    url = await me_server(server)
    code, _, err = await login(tmp_path, "--ingest-url", url, "--lang", "fr",
                               DIHYA_TOKEN="tok_good")
    assert code == Exit.OK, err
    config = tmp_path / ".config" / "dihya" / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    data = tomllib.loads(config.read_text())
    assert data["default_profile"] == "default"
    assert data["profiles"]["default"]["token"] == "tok_good"
    assert data["profiles"]["default"]["lang"] == "fr"


async def test_a_refused_token_is_not_saved(server: Serve, tmp_path: Path) -> None:
    url = await me_server(server)
    code, _, err = await login(tmp_path, "--ingest-url", url, stdin="tok_bad\n")
    assert code == Exit.AUTH
    assert "Unknown token." in err
    assert not (tmp_path / ".config").exists()
    code, _, err = await login(tmp_path, "--ingest-url", url, stdin="")
    assert code == Exit.USAGE and "No token given" in err
