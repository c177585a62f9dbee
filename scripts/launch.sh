#!/usr/bin/env bash
# The README's run command ("bash scripts/launch.sh"): installs napari-unet with napari
# and Qt into ./.venv, then opens napari with the plugin's widgets docked and a sample image.
# Arguments are passed to `napari-unet gui` (e.g. image paths, --sample c2c12_timelapse).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "napari-unet needs Python 3.10 or newer (found $("$PY" --version 2>&1))." >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  # (a failed try leaves nothing behind: venv makes the interpreter before ensurepip fails)
  "$PY" -m venv .venv || { rm -rf .venv; echo "Could not create a virtual environment: on Debian/Ubuntu run 'sudo apt-get install python3-venv' first." >&2; exit 1; }
fi
# a .venv without pip (left by an older try of this script, or made with --without-pip or uv): pip is
# added to it, nothing in it removed
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  .venv/bin/python -m ensurepip --upgrade >/dev/null 2>&1 || { echo "The .venv here has no pip and cannot get one: on Debian/Ubuntu run 'sudo apt-get install python3-venv' first (or move .venv away)." >&2; exit 1; }
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch 2.13.0 first: a range would let pip pick a newer, much larger build. A regular (not
# editable) install: setuptools prints a screen of warnings for editable ones, and a user who
# only runs the plugin has nothing to edit (pip install -e ".[all]" for development). On Linux PyPI's
# torch brings CUDA's libraries (gigabytes a laptop without an NVIDIA GPU does not use):
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/launch.sh takes the CPU build.
echo "Installing napari-unet, napari and PyTorch into .venv (the first time takes several minutes)..."
.venv/bin/python -m pip install -q ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} "torch==2.13.0" ".[all]"
# Qt 6 starts on X11 only with libxcb-cursor, which some desktops lack: said before Qt's own error
if [ "$(uname -s)" = Linux ] && command -v ldconfig >/dev/null 2>&1 && ! ldconfig -p | grep -q "libxcb-cursor.so.0"; then
  echo "Qt may not start: libxcb-cursor is missing (on Debian/Ubuntu: sudo apt-get install libxcb-cursor0)." >&2
fi
exec .venv/bin/napari-unet gui "$@"
