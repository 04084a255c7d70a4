#!/usr/bin/env bash
# Submit a dinowm job to SLURM on a Ray cluster spanning the allocation (dinowm.sbatch).
#
#   deploy/slurm/launch.sh [--dry-run] [--type T] [--nodes N] [--gpu G] [--cpus C] [--time HH:MM:SS]
#                          [--partition P] [--sbatch-arg ARG]... [--] [ARGS for the dinowm command...]
#
# Knobs (flags win over the environment variables of the same name, which the original DINO-WM launcher used):
#   TYPE       train | tune | plan | serve | memory-eval           (default train)
#   NODES      nodes in the allocation, one Ray node each          (default 1)
#   GPU        GPUs per node (0: a CPU job)                        (default 1)
#   CPUS       CPUs per node for Ray                               (default: sbatch's, the whole node)
#   TIME       wall-clock limit                                    (default 24:00:00)
#   PARTITION  SLURM partition                                     (default: the cluster's default)
# Everything after the knobs goes to the command: overrides (env=pusht data.path=/shared/pusht ...), a checkpoint
# for plan / serve, a search space for tune. --dry-run prints the sbatch command instead of running it.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
TYPE=${TYPE:-train} NODES=${NODES:-1} GPU=${GPU:-1} CPUS=${CPUS:-} TIME=${TIME:-24:00:00} PARTITION=${PARTITION:-}
dry_run=0
extra=()

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
need() { [ "$#" -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }; }

while [ "$#" -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --type) need "$@"; TYPE=$2; shift 2 ;;
    --nodes) need "$@"; NODES=$2; shift 2 ;;
    --gpu) need "$@"; GPU=$2; shift 2 ;;
    --cpus) need "$@"; CPUS=$2; shift 2 ;;
    --time) need "$@"; TIME=$2; shift 2 ;;
    --partition) need "$@"; PARTITION=$2; shift 2 ;;
    --sbatch-arg) need "$@"; extra+=("$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) break ;;
  esac
done

case "$TYPE" in
  train|tune|plan|serve|memory-eval) ;;
  *) echo "error: TYPE must be train, tune, plan, serve or memory-eval, got '$TYPE'" >&2; exit 2 ;;
esac
for knob in NODES GPU; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || { echo "error: $knob must be a whole number, got '${!knob}'" >&2; exit 2; }
done
[ "$NODES" -ge 1 ] || { echo "error: NODES must be at least 1" >&2; exit 2; }
if [ "$TYPE" = memory-eval ]; then
  echo "note: TYPE=memory-eval runs 'dinowm memory-eval', which this checkout must provide" >&2
fi

# dinowm.sbatch runs from SLURM's spool directory: DINOWM_SLURM_DIR tells it where its library is.
cmd=(sbatch --job-name="dinowm-$TYPE" --nodes="$NODES" --ntasks-per-node=1 --time="$TIME"
     --export="ALL,DINOWM_SLURM_DIR=$here")
[ -z "$PARTITION" ] || cmd+=(--partition="$PARTITION")
[ "$GPU" -eq 0 ] || cmd+=(--gpus-per-node="$GPU")
[ -z "$CPUS" ] || cmd+=(--cpus-per-task="$CPUS")
cmd+=("${extra[@]}" "$here/dinowm.sbatch" "$TYPE" "$@")

if [ "$dry_run" -eq 1 ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
