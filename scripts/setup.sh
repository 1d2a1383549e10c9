#!/usr/bin/env bash
# Set up napari-spoco for development in ./.venv (idempotent: a second run only checks).
#
#  * creates .venv with the first Python >= 3.10 it finds (python3.11, python3, ...);
#  * installs PyTorch first: the CPU build where no NVIDIA GPU is present (a bare `torch`
#    requirement would pull a multi-GB CUDA build), the default build where one is;
#  * installs napari-spoco in editable mode with its test extras;
#  * installs the Debian packages the headless GUI tests need (Xvfb, Mesa, xcb), when run as
#    root on a Debian/Ubuntu machine (otherwise it says what to install and carries on).
#
# Environment: TORCH_SPEC (default torch==2.13.0 on CPU machines), SPOCO_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

PY=""
for cand in python3.11 python3.12 python3.13 python3.10 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    PY="$cand"; break
  fi
done
[ -n "$PY" ] || { log "need Python >= 3.10 (python3.11 recommended)"; exit 1; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
PIP=( "$VPY" -m pip --disable-pip-version-check -q )

if ! "$VPY" -c 'import torch' >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing the default (CUDA) torch build"
    "${PIP[@]}" install "${TORCH_SPEC:-torch>=2.1}"
  else
    spec="${TORCH_SPEC:-torch==2.13.0}"
    log "no GPU: installing the CPU build of torch ($spec)"
    # The PyTorch CPU index serves CPU-only wheels; where it cannot be reached, pip falls back to
    # the configured indexes and local wheel folders (on our CI machines a local CPU wheel).
    "${PIP[@]}" install "$spec" numpy --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 \
      | grep -v -e "^WARNING: Location" -e "Retrying" -e "Could not fetch URL" -e "NewConnectionError" >&2 || true
    "$VPY" -c 'import torch' || { log "torch failed to install"; exit 1; }
  fi
fi

if ! "$VPY" -c 'import napari_spoco, pytest' >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.spoco-installed ]; then
  log "installing napari-spoco (editable) with test extras"
  "${PIP[@]}" install -e ".[testing]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VPY" -c 'import napari_spoco, pytest' || { log "napari-spoco failed to install"; exit 1; }
  touch .venv/.spoco-installed
fi

# Debian packages for the headless napari GUI tests (Xvfb + Mesa OpenGL + xcb).
APT_PKGS="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3"
if [ "${SPOCO_SKIP_APT:-0}" != 1 ] && ! command -v xvfb-run >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages for the GUI tests"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends $APT_PKGS >/dev/null \
      || log "apt-get failed: GUI tests will be skipped (install: $APT_PKGS)"
  else
    log "not root or no apt-get: for the GUI tests install: $APT_PKGS"
  fi
fi
log "ready: .venv/bin/napari-spoco --help"
