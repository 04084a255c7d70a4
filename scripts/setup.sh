#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: Debian packages for headless rendering, a virtualenv, and the project.
# Re-running is cheap: each step is skipped when already done (the venv step is keyed on pyproject.toml and EXTRAS).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
# Optional extras installed with the project. memory_maze (Memory-Maze on dm_control) adds ~20-30 s here and
# its tests take well under a minute, so CI runs them; EXTRAS=dev keeps a lean environment.
EXTRAS=${EXTRAS:-dev,memory_maze}
DEB_PACKAGES="libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libopengl0 libosmesa6 libgl1 libglib2.0-0 ffmpeg"

# 1. Headless OpenGL (MuJoCo via EGL / OSMesa) and ffmpeg (videos). Needs root or sudo.
missing=""
for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "[setup] installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

# 2. Virtualenv with torch first (pip takes the local wheels on our machines), then the project + dev tools.
stamp="$VENV/.setup-stamp"
want="$(cat pyproject.toml - <<<"$EXTRAS" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] creating $VENV and installing dependencies (a few minutes the first time)"
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  log="$VENV/setup.log"
  pipi() { "$VENV/bin/python" -m pip install --progress-bar off "$@" >>"$log" 2>&1 || {
    echo "[setup] pip install $* failed; last lines of $log:" >&2; tail -n 40 "$log" >&2; exit 1; }; }
  pipi --upgrade pip
  pipi torch==2.14.1 torchvision==0.29.1
  pipi -e ".[$EXTRAS]"
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $VENV"
