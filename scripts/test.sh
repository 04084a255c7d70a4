#!/usr/bin/env bash
# The project's test command (README): set up, then run the whole suite. Extra args go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
export MUJOCO_GL=${MUJOCO_GL:-egl} RAY_USAGE_STATS_ENABLED=0 PYTHONHASHSEED=0
export PATH="$PWD/.venv/bin:$PATH"  # subprocesses (ray start, ray job submit) use the project environment
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # pytest's "no tests collected" must not pass as green.
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
