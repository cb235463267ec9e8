#!/usr/bin/env bash
# Run P processes of smartvlm_jax.main on this machine as one multi-process JAX job (CPU devices).
#
# This is the multi-host code path (coordinator, per-process data shards, collective checkpoints) on a
# single machine, for tests and for trying a config before a TPU pod or a GPU cluster.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [-n PROCESSES] [-d DEVICES] [-p PORT] [--log-dir DIR] [--dry-run] [-h] -- MAIN_ARGS...

Starts PROCESSES copies of `python -m smartvlm_jax.main MAIN_ARGS` on this machine, each with DEVICES
simulated CPU devices, joined through a coordinator on 127.0.0.1:PORT (explicit distributed mode).

  -n, --processes P   number of processes (default 2)
  -d, --devices D     CPU devices per process (default 2): XLA_FLAGS=--xla_force_host_platform_device_count=D
  -p, --port PORT     coordinator port (default: a free port)
      --log-dir DIR   write process I's output to DIR/process_I.log instead of the terminal
      --dry-run       print the commands and exit
  -h, --help          this help

Each process's pid is printed as "local.sh: process I pid N". The launcher waits for every process
and exits with the first non-zero status (0 when all succeed). A process that dies makes the others
exit non-zero after --config.distributed.heartbeat_timeout_s; SIGINT/SIGTERM to the launcher is passed
on to every process (SIGTERM makes the trainer save a checkpoint and stop).

Example:
  launch/local.sh -n 2 -- --config configs/smoke.py --workdir workdirs/smoke2
EOF
}

die() {
  echo "local.sh: $*" >&2
  exit 2
}

processes=2
devices=2
port=""
log_dir=""
dry_run=0
while (($#)); do
  case "$1" in
    -n | --processes) processes="${2:?-n needs a value}"; shift 2 ;;
    -d | --devices) devices="${2:?-d needs a value}"; shift 2 ;;
    -p | --port) port="${2:?-p needs a value}"; shift 2 ;;
    --log-dir) log_dir="${2:?--log-dir needs a value}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (main's flags go after --; see -h)" ;;
  esac
done
main_args=("$@")

[[ "$processes" =~ ^[1-9][0-9]*$ ]] || die "-n/--processes must be a positive integer, got '$processes'"
[[ "$devices" =~ ^[1-9][0-9]*$ ]] || die "-d/--devices must be a positive integer, got '$devices'"
((${#main_args[@]})) || die "no arguments for smartvlm_jax.main after -- (need at least --config and --workdir)"
python="${PYTHON:-python}"

if [[ -z "$port" ]]; then
  # The kernel hands out an unused port; the tiny race until the coordinator binds it is acceptable here.
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$port" =~ ^[0-9]+$ ]] || die "-p/--port must be a number, got '$port'"

# Keep the caller's XLA flags except a device count (pytest sets 8), which this launcher decides.
xla_flags=""
for flag in ${XLA_FLAGS:-}; do
  [[ "$flag" == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$devices"

commands=()
for ((i = 0; i < processes; i++)); do
  cmd=(env "JAX_PLATFORMS=cpu" "XLA_FLAGS=$xla_flags"
    "$python" -m smartvlm_jax.main "${main_args[@]}"
    --config.distributed.mode=explicit
    "--config.distributed.coordinator_address=127.0.0.1:$port"
    "--config.distributed.num_processes=$processes"
    "--config.distributed.process_id=$i")
  commands+=("$(printf '%q ' "${cmd[@]}")")
done

if ((dry_run)); then
  for ((i = 0; i < processes; i++)); do
    if [[ -n "$log_dir" ]]; then
      echo "${commands[$i]}> $(printf '%q' "$log_dir/process_$i.log") 2>&1 &"
    else
      echo "${commands[$i]}&"
    fi
  done
  echo "wait"
  exit 0
fi

[[ -n "$log_dir" ]] && mkdir -p "$log_dir"
pids=()
for ((i = 0; i < processes; i++)); do
  if [[ -n "$log_dir" ]]; then
    eval "exec ${commands[$i]}" >"$log_dir/process_$i.log" 2>&1 &
  else
    # Prefix each line with the process number; exec keeps $! the trainer's pid.
    eval "exec ${commands[$i]}" > >(sed -u "s/^/[$i] /") 2>&1 &
  fi
  pids+=("$!")
  echo "local.sh: process $i pid $!"
done

# shellcheck disable=SC2329  # invoked by the traps below
forward() {
  echo "local.sh: passing SIG$1 to the processes" >&2
  kill -s "$1" "${pids[@]}" 2>/dev/null || true
}
trap 'forward TERM' TERM
trap 'forward INT' INT

status=0
declare -A running=()
for ((i = 0; i < processes; i++)); do running[${pids[$i]}]=$i; done
while ((${#running[@]})); do
  finished=""
  rc=0
  wait -n -p finished "${!running[@]}" || rc=$?
  if [[ -z "${finished:-}" ]]; then
    continue # a trapped signal interrupted wait; keep waiting for the processes
  fi
  echo "local.sh: process ${running[$finished]} (pid $finished) exited with status $rc"
  unset "running[$finished]"
  if ((rc != 0 && status == 0)); then
    status=$rc
  fi
done
exit "$status"
