"""``dihya completion``: the scripts load in their shell and complete commands (bash always;
zsh and fish where installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _need(problem: str) -> None:
    """Skip for ``problem``, except in CI, where a missing script or shell is a failure (as
    the console tests' browser): .ci/run installs them, so their absence means it failed."""
    if os.environ.get("CI"):
        pytest.fail(f"the completion tests need this in CI: {problem}")
    pytest.skip(problem)


def _env() -> dict[str, str]:
    if not (BIN / "dihya").exists():
        _need("the dihya console script is not installed in this environment")
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def complete_in_bash(line: str) -> list[str]:
    """What bash offers for ``line`` once ``source <(dihya completion bash)`` has run."""
    script = f"""
source <(dihya completion bash) || exit 3
spec=$(complete -p dihya) || exit 4
func=${{spec##*-F }}; func=${{func%% *}}
COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
"$func" dihya "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [word.strip() for word in done.stdout.splitlines() if word.strip()]


def test_bash_loads_the_script_and_completes_a_subcommand() -> None:
    assert complete_in_bash("dihya deli") == ["deliveries"]
    assert set(complete_in_bash("dihya deliveries re")) == {"resend", "retry", "recover"}
    assert {"bash", "zsh", "fish"} <= set(complete_in_bash("dihya completion "))


def test_fish_completes_a_subcommand() -> None:
    if shutil.which("fish") is None:
        _need("fish is not installed")
    done = subprocess.run(
        ["fish", "-c", "dihya completion fish | source; complete -C 'dihya deliveries re'"],
        capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert {line.split("\t")[0] for line in done.stdout.splitlines()} == {
        "resend", "retry", "recover"}


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_the_other_shells_load_their_script(shell: str) -> None:
    if shutil.which(shell) is None:
        _need(f"{shell} is not installed")
    load = {"zsh": "autoload -U compinit && compinit -u; source <(dihya completion zsh)",
            "fish": "dihya completion fish | source"}[shell]
    done = subprocess.run([shell, "-c", load], capture_output=True, text=True, env=_env(),
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_a_missing_script_or_shell_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="need this in CI: fish is not installed"):
        _need("fish is not installed")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        _need("fish is not installed")
