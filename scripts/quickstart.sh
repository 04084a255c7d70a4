#!/usr/bin/env bash
# The main job (README): set up, then run the end-to-end quickstart on embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MUJOCO_GL=${MUJOCO_GL:-egl} RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/dinowm quickstart "$@"
