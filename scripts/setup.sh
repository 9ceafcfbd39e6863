#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs Atalaia with its development extras.
# Reuses the uv/pip download caches, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

pick_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 14) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

if [ ! -x "$VENV/bin/python" ]; then
  py=$(pick_python) || { echo "error: Python 3.11-3.13 not found; install python3.11 or set PYTHON=/path/to/python" >&2; exit 1; }
  echo "creating $VENV with $py" >&2
  "$py" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "uv>=0.5,<1"
"$VENV/bin/uv" pip install --python "$VENV/bin/python" -q -e ".[dev]"
touch "$VENV/.atalaia-installed"
echo "environment ready: $VENV" >&2
