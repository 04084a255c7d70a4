# shellcheck shell=bash
# A Ray cluster inside a SLURM allocation, and a dinowm job on it: sourced by dinowm.sbatch (and by tests, which
# replace srun / scontrol / hostname with fakes on PATH and run everything on one machine).
#
# Ray's documented SLURM pattern: the first node of the allocation runs the head (`ray start --head --block`
# through `srun --nodes=1 --ntasks=1 -w <node>`), every other node a worker that joins it; the batch script waits
# until every node has joined, submits the job to the head's dashboard with `ray job submit`, waits for it, and
# stops Ray by ending the srun steps (SIGTERM: `ray start --block` then stops what it started on its node).
#
# Settings (environment):
#   RAY_PORT=6379 RAY_DASHBOARD_PORT=8265   the head's GCS and dashboard ports
#   RAY_START_ARGS=""                       extra `ray start` arguments for every node (--object-store-memory ...)
#   RAY_NODES_TIMEOUT_S=300                 how long to wait for every node to join
#   DINOWM_PYTHON=python                    the interpreter with dinowm installed (on every node)
#   RAY=ray                                 the `ray` command of that environment
#   RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=5 how long a node drains when Ray stops
#   RAY_AUTH_MODE=token                     Ray 2.60's default; the head writes ~/.ray/auth_token (or
#                                           $RAY_AUTH_TOKEN_PATH), which the other nodes read from the shared home

RAY=${RAY:-ray}
DINOWM_PYTHON=${DINOWM_PYTHON:-python}
RAY_PORT=${RAY_PORT:-6379}
RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT:-8265}
RAY_NODES_TIMEOUT_S=${RAY_NODES_TIMEOUT_S:-300}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token} RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}
# A node that gets SIGTERM drains first (up to 30 s by default, for Serve replicas behind other nodes' proxies); at
# the end of a batch job the work is over, so the stop is quick.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-5}

RC_STEP_PIDS=()  # the srun steps running `ray start --block`, head first

rc_log() { echo "ray_cluster: $*" >&2; }

# The allocation's node names, one per line.
rc_nodes() {
  scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a SLURM allocation (SLURM_JOB_NODELIST is unset)}"
}

# The address a node is reached at (its first address, as Ray's SLURM guide does).
rc_node_ip() {
  local ip
  ip=$(srun --nodes=1 --ntasks=1 -w "$1" hostname --ip-address) || return 1
  echo "${ip%% *}"
}

# CPUs and GPUs Ray offers on each node: what SLURM gave the task.
rc_resources() {
  local args=(--num-cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}")
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then args+=(--num-gpus="$SLURM_GPUS_ON_NODE"); fi
  echo "${args[@]}"
}

# rc_start_head NODE IP: the head on NODE, in the background.
rc_start_head() {
  # shellcheck disable=SC2046,SC2086  # word splitting of the argument lists is intended
  srun --nodes=1 --ntasks=1 -w "$1" \
    "$RAY" start --head --block --node-ip-address="$2" --port="$RAY_PORT" \
    --dashboard-host="$2" --dashboard-port="$RAY_DASHBOARD_PORT" --include-dashboard=true \
    $(rc_resources) ${RAY_START_ARGS:-} &
  RC_STEP_PIDS+=($!)
}

# rc_start_worker NODE HEAD_ADDRESS: a worker on NODE that joins the head, in the background.
rc_start_worker() {
  # shellcheck disable=SC2046,SC2086
  srun --nodes=1 --ntasks=1 -w "$1" \
    "$RAY" start --block --address="$2" $(rc_resources) ${RAY_START_ARGS:-} &
  RC_STEP_PIDS+=($!)
}

# The number of alive nodes, from the head's dashboard (0 while it is not up).
rc_alive_nodes() {
  "$RAY" list nodes --address="$1" --filter "state=ALIVE" --format json --limit 10000 2>/dev/null |
    grep -o '"node_id"' | wc -l
}

# rc_wait_nodes DASHBOARD N: until N nodes are alive; fails after RAY_NODES_TIMEOUT_S.
rc_wait_nodes() {
  local deadline=$((SECONDS + RAY_NODES_TIMEOUT_S)) alive=0
  while :; do
    alive=$(rc_alive_nodes "$1")
    if [ "$alive" -ge "$2" ]; then
      rc_log "$alive/$2 nodes alive"
      return 0
    fi
    for pid in "${RC_STEP_PIDS[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        rc_log "a ray start step exited before the cluster was up"
        return 1
      fi
    done
    if [ "$SECONDS" -ge "$deadline" ]; then
      rc_log "only $alive/$2 nodes joined within ${RAY_NODES_TIMEOUT_S}s"
      return 1
    fi
    sleep 2
  done
}

# rc_stop: end the srun steps (SIGTERM; srun forwards it, `ray start --block` stops its node's processes).
rc_stop() {
  local pid
  for pid in "${RC_STEP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${RC_STEP_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  RC_STEP_PIDS=()
}

# rc_entrypoint TYPE [ARGS...]: the job's command line for a launcher TYPE, printed one word per line.
#   train        python -m ray_jobs.train ARGS          (dinowm train; ray.num_workers defaults to every GPU)
#   tune         python -m ray_jobs.tune ARGS           (dinowm tune SPACE ...)
#   plan         python -m ray_jobs.cli plan ARGS --ray (dinowm plan CKPT ...: episodes in Ray env actors)
#   serve        python -m ray_jobs.cli serve ARGS      (dinowm serve CKPT ...: until the allocation ends)
#   memory-eval  python -m ray_jobs.cli memory-eval ARGS (requires a `dinowm memory-eval` command)
rc_entrypoint() {
  local type=$1
  shift
  local -a cmd
  case "$type" in
    train)
      local workers=$((${SLURM_JOB_NUM_NODES:-1} * ${SLURM_GPUS_ON_NODE:-0}))
      cmd=("$DINOWM_PYTHON" -m ray_jobs.train)
      if [ "$workers" -gt 0 ]; then cmd+=("ray.num_workers=$workers" ray.use_gpu=true); fi
      cmd+=("$@")  # later overrides win: ray.num_workers=... on the command line replaces the default
      ;;
    tune) cmd=("$DINOWM_PYTHON" -m ray_jobs.tune "$@") ;;
    plan) cmd=("$DINOWM_PYTHON" -m ray_jobs.cli plan "$@" --ray) ;;
    serve) cmd=("$DINOWM_PYTHON" -m ray_jobs.cli serve "$@" --host 0.0.0.0) ;;
    memory-eval) cmd=("$DINOWM_PYTHON" -m ray_jobs.cli memory-eval "$@") ;;
    *)
      rc_log "unknown TYPE '$type' (train, tune, plan, serve, memory-eval)"
      return 2
      ;;
  esac
  printf '%s\n' "${cmd[@]}"
}

# rc_submit DASHBOARD COMMAND...: `ray job submit` to the head, follow its logs; returns 0 when it SUCCEEDED.
rc_submit() {
  local address=$1
  shift
  local id out status tries=0
  id="dinowm-${SLURM_JOB_ID:-local}-$(date +%s)"
  rc_log "submitting $id: $*"
  # The dashboard answers before every node's job agent has registered; that refusal means nothing ran yet.
  until out=$("$RAY" job submit --address="$address" --submission-id="$id" --no-wait -- "$@" 2>&1); do
    if [[ $out == *"No available agent"* ]] && [ "$tries" -lt 60 ]; then
      tries=$((tries + 1))
      sleep 2
      continue
    fi
    echo "$out" >&2
    return 1
  done
  "$RAY" job logs --address="$address" --follow "$id" || true
  status=$("$RAY" job status --address="$address" "$id" 2>&1)
  if [[ $status == *"Job '$id' succeeded"* ]]; then
    rc_log "job $id SUCCEEDED"
    return 0
  fi
  rc_log "job $id did not succeed: $(grep -E "Job '|Status" <<<"$status" | tr '\n' ' ')"
  return 1
}

# rc_main TYPE [ARGS...]: the whole batch job. Exit status: the job's (0 done), 1 cluster start failed, 2 bad TYPE.
rc_main() {
  local -a nodes entry
  local out
  out=$(rc_entrypoint "$@") || return 2
  mapfile -t entry <<<"$out"
  mapfile -t nodes < <(rc_nodes)
  [ "${#nodes[@]}" -gt 0 ] || { rc_log "no nodes in SLURM_JOB_NODELIST"; return 1; }
  local head=${nodes[0]} head_ip
  head_ip=$(rc_node_ip "$head") || { rc_log "cannot resolve $head"; return 1; }
  local gcs="$head_ip:$RAY_PORT" dashboard="http://$head_ip:$RAY_DASHBOARD_PORT"
  trap rc_stop EXIT
  trap 'exit 143' TERM INT  # a time limit or scancel: leave through the EXIT trap, which stops Ray
  rc_log "head $head ($gcs), workers: ${nodes[*]:1}"
  rc_start_head "$head" "$head_ip"
  rc_wait_nodes "$dashboard" 1 || return 1  # workers join once the head's GCS answers
  local node
  for node in "${nodes[@]:1}"; do rc_start_worker "$node" "$gcs"; done
  rc_wait_nodes "$dashboard" "${#nodes[@]}" || return 1
  local rc=0
  rc_submit "$dashboard" "${entry[@]}" || rc=$?
  rc_log "job finished with status $rc; stopping Ray"
  return "$rc"
}
