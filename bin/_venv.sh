# Sourced by bin/*: create .venv and install the project (with extras) when missing or stale.
ensure_venv() {
  # two statements: a single `local` expands every word before it assigns any, which left
  # the stamp without its extras (bin/demo's install then passed for bin/test's)
  local extras="${1:-}"
  local stamp=".venv/.installed${extras:+-$extras}"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "Dihya needs Python 3.11 or newer as \$PYTHON or python3." >&2; exit 1
  fi
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "Installing Dihya and its dependencies into .venv (log: .venv/install.log)…" >&2
    if ! { .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -e ".${extras:+[$extras]}" -e sdk/python
         } >.venv/install.log 2>&1; then
      tail -n 30 .venv/install.log >&2; echo "Installation failed; see .venv/install.log" >&2
      exit 1
    fi
    touch "$stamp"
  fi
}
