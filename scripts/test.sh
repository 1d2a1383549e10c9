#!/usr/bin/env bash
# Run the test suite (after scripts/setup.sh). Under a virtual display when Xvfb is available,
# so that the napari GUI tests can open real OpenGL windows.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM="${QT_QPA_PLATFORM:-xcb}"
if command -v xvfb-run >/dev/null 2>&1 && [ -z "${DISPLAY:-}" ]; then
  exec xvfb-run -a .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest "$@"
