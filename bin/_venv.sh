# Sourced by bin/*: create .venv and install the project from its lock (locks/<extras>.txt, exact
# versions with hashes) when missing or stale. Only python3 (3.11+) is needed: uv comes from
# PyPI into the venv first (locks/uv.txt, hashed too), then installs everything else.

# uv in .venv, from locks/uv.txt (pip checks its hashes)
ensure_uv() {
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "Dihya needs Python 3.11 or newer as \$PYTHON or python3." >&2; exit 1
  fi
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  if [ ! -x .venv/bin/uv ] || [ locks/uv.txt -nt .venv/bin/uv ]; then
    if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
           --require-hashes -r locks/uv.txt >.venv/install.log 2>&1; then
      tail -n 30 .venv/install.log >&2; echo "Installing uv failed; see .venv/install.log" >&2
      exit 1
    fi
    touch .venv/bin/uv
  fi
}

ensure_venv() {
  # two statements: a single `local` expands every word before it assigns any, which left
  # the stamp without its extras (bin/demo's install then passed for bin/test's)
  local extras="${1:-}"
  local lock="locks/${extras:-runtime}.txt"
  local stamp=".venv/.installed-${extras:-runtime}"
  ensure_uv
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$lock" -nt "$stamp" ]; then
    echo "Installing Dihya and its dependencies into .venv from $lock (log: .venv/install.log)…" >&2
    # the lock (added to what another lock installed: bin/demo after bin/test keeps the test
    # tools; the locks agree on every version they share), then the project itself, built by
    # the lock's setuptools (no build isolation: no unhashed download)
    # --compile-bytecode: uv does not write .pyc files by default (pip does), and with
    # PYTHONDONTWRITEBYTECODE set every process would compile its imports again at each start
    if ! { UV_LINK_MODE=copy .venv/bin/uv pip install --python .venv/bin/python --require-hashes \
             --compile-bytecode -r "$lock" &&
           UV_LINK_MODE=copy .venv/bin/uv pip install --python .venv/bin/python --no-deps \
             --no-build-isolation -e . -e sdk/python
         } >.venv/install.log 2>&1; then
      tail -n 30 .venv/install.log >&2; echo "Installation failed; see .venv/install.log" >&2
      exit 1
    fi
    touch "$stamp"
  fi
}
