#!/usr/bin/env bash
# Run the test suite (after scripts/setup.sh): ruff first (rules in pyproject.toml), then pytest,
# under a virtual display when Xvfb is available so that the napari GUI tests can open real
# OpenGL windows.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/ruff ]; then
  echo "[test] .venv/bin/ruff is missing: run 'bash scripts/setup.sh' (ruff comes with the testing extra)" >&2
  exit 1
fi
if ! .venv/bin/ruff check src tests benchmarks scripts; then
  echo "[test] ruff failed. '.venv/bin/ruff check --fix src tests benchmarks scripts' fixes import order" \
       "and the other [*] findings; the rest (e.g. C901, too complex) need a change by hand." >&2
  exit 1
fi
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"
if command -v xvfb-run >/dev/null 2>&1 && [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
