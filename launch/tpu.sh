#!/usr/bin/env bash
# Train smartvlm_jax on a Cloud TPU VM or pod slice: create it (queued resources), put the code on every
# worker, install, run main on all workers, stream the log, delete the TPU.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh [options] COMMAND... [-- MAIN_ARGS...]

Commands (several run in the order given, e.g. `create setup run logs delete`):
  create   request the TPU as a queued resource and wait until it is ACTIVE
  setup    copy this checkout (git archive of HEAD) or clone --repo to every worker and install it
  run      start `python -m smartvlm_jax.main MAIN_ARGS` on --worker=all, detached (log: ~/smartvlm_jax/run.log)
  logs     stream worker --log-worker's log until its trainer exits
  stop     send SIGTERM to the trainers (they save a checkpoint and stop)
  status   print the queued resource's state
  delete   delete the queued resource and its TPU

Options:
  -n, --name NAME          TPU / queued-resource name (default smartvlm-tpu)
  -z, --zone ZONE          zone (default: gcloud's compute/zone)
      --project ID         project (default: gcloud's core/project)
  -a, --accelerator TYPE   e.g. v5litepod-8 (one host), v4-32, v5p-64 (pods) (default v5litepod-8)
  -r, --runtime VERSION    TPU software version (default v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base)
      --spot               use Spot capacity
      --repo URL           clone this git URL on the workers instead of copying the local checkout
      --branch NAME        branch or tag for --repo (default main)
      --log-worker W       worker whose log `logs` streams: a number or all (default 0)
      --no-preflight       skip the local check before `create` and `run`: MAIN_ARGS compiled for the
                           accelerator on this machine (--compile_only=tpu:TYPE; needs the package and
                           its [tpu-compile] extra here), refusing a run whose programs do not fit
      --dry-run            print the commands instead of running them
  -h, --help               this help

MAIN_ARGS must include --config and --workdir. On a pod slice (several workers) the workdir must be a
directory every worker sees (an NFS/Filestore mount or a gcsfuse-mounted bucket): each process writes its
part of the checkpoints there. Multi-process JAX starts with config.distributed.mode=auto (set by `run`);
a worker that dies or hangs ends the job after --config.distributed.heartbeat_timeout_s, and workers that
never join are given up after --config.distributed.initialization_timeout_s.

Example:
  launch/tpu.sh -n smartvlm -z us-central1-a -a v4-32 -r tpu-ubuntu2204-base create setup run logs \
    -- --config configs/smarter.py --workdir /mnt/shared/workdirs/smarter
EOF
}

die() {
  echo "tpu.sh: $*" >&2
  exit 2
}

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
name="smartvlm-tpu"
zone=""
project=""
accelerator="v5litepod-8"
runtime="v2-alpha-tpuv5-lite"
spot=0
repo_url=""
branch="main"
log_worker="0"
dry_run=0
preflight=1
commands=()
while (($#)); do
  case "$1" in
    -n | --name) name="${2:?$1 needs a value}"; shift 2 ;;
    -z | --zone) zone="${2:?$1 needs a value}"; shift 2 ;;
    --project) project="${2:?$1 needs a value}"; shift 2 ;;
    -a | --accelerator) accelerator="${2:?$1 needs a value}"; shift 2 ;;
    -r | --runtime) runtime="${2:?$1 needs a value}"; shift 2 ;;
    --spot) spot=1; shift ;;
    --repo) repo_url="${2:?$1 needs a value}"; shift 2 ;;
    --branch) branch="${2:?$1 needs a value}"; shift 2 ;;
    --log-worker) log_worker="${2:?$1 needs a value}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --no-preflight) preflight=0; shift ;;
    -h | --help) usage; exit 0 ;;
    create | setup | run | logs | stop | status | delete) commands+=("$1"); shift ;;
    --) shift; break ;;
    *) die "unknown option or command '$1' (see -h)" ;;
  esac
done
main_args=("$@")

((${#commands[@]})) || die "no command given (create, setup, run, logs, stop, status or delete; see -h)"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lower-case letters, digits and '-', got '$name'"
[[ "$log_worker" =~ ^([0-9]+|all)$ ]] || die "--log-worker must be a worker number or 'all', got '$log_worker'"
if [[ -z "$zone" ]]; then
  if ((dry_run)); then
    zone="ZONE"
  else
    zone="$(gcloud config get-value compute/zone 2>/dev/null || true)"
  fi
  [[ -n "$zone" ]] || die "no --zone given and gcloud has no compute/zone set"
fi
for c in "${commands[@]}"; do
  if [[ "$c" == run ]] && ! ((${#main_args[@]})); then
    die "'run' needs smartvlm_jax.main's flags after -- (at least --config and --workdir)"
  fi
done

gcloud_scope=("--zone=$zone")
[[ -n "$project" ]] && gcloud_scope+=("--project=$project")
# Paths on the workers, relative to the home directory where ssh commands start.
remote_dir=smartvlm_jax
log_file=smartvlm_jax/run.log
pid_file=smartvlm_jax/run.pid
# The README's TPU install command.
install='python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt "jax[tpu]==0.10.2" && pip install -e .'

# One shell word that pastes back as ARG: bare when safe, else single-quoted.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  elif [[ "$1" =~ ^(--[a-z-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Print (--dry-run) or run one command, exactly as given.
step() {
  if ((dry_run)); then
    local words=() arg
    for arg in "$@"; do words+=("$(quote "$arg")"); done
    echo "${words[*]}"
  else
    "$@"
  fi
}

ssh_workers() { # WORKER COMMAND
  step gcloud compute tpus tpu-vm ssh "$name" "${gcloud_scope[@]}" "--worker=$1" "--command=$2"
}

do_create() {
  local create=(gcloud compute tpus queued-resources create "$name" "--node-id=$name" "${gcloud_scope[@]}"
    "--accelerator-type=$accelerator" "--runtime-version=$runtime")
  ((spot)) && create+=(--spot)
  step "${create[@]}"
  local describe=(gcloud compute tpus queued-resources describe "$name" "${gcloud_scope[@]}"
    "--format=value(state.state)")
  if ((dry_run)); then
    echo "# repeated every 30 s until it prints ACTIVE (FAILED or SUSPENDED stops with an error):"
    step "${describe[@]}"
    return
  fi
  local state=""
  while [[ "$state" != ACTIVE ]]; do
    state="$("${describe[@]}")"
    echo "tpu.sh: $name is ${state:-unknown}"
    case "$state" in FAILED | SUSPENDED) die "queued resource $name is $state" ;; esac
    [[ "$state" == ACTIVE ]] || sleep 30
  done
}

do_setup() {
  if [[ -n "$repo_url" ]]; then
    ssh_workers all "rm -rf $remote_dir && git clone --depth 1 --branch $(printf '%q' "$branch") $(printf '%q' "$repo_url") $remote_dir && cd $remote_dir && $install"
  else
    # Committed files only (HEAD): the workers get what `git status` calls clean.
    local archive="/tmp/smartvlm_jax-$name.tar.gz"
    step git archive --format=tar.gz "--output=$archive" HEAD
    step gcloud compute tpus tpu-vm scp "$archive" "$name:smartvlm_jax.tar.gz" "${gcloud_scope[@]}" --worker=all
    ssh_workers all "rm -rf $remote_dir && mkdir -p $remote_dir && tar -xzf smartvlm_jax.tar.gz -C $remote_dir && cd $remote_dir && $install"
  fi
}

do_run() {
  local main
  main="python -m smartvlm_jax.main $(printf '%q ' "${main_args[@]}")--config.distributed.mode=auto"
  # Detached, so a dropped ssh connection does not stop training; the pid file lets `logs` and `stop` find it.
  ssh_workers all "cd $remote_dir && . .venv/bin/activate && (nohup $main > run.log 2>&1 < /dev/null & echo \$! > run.pid)"
}

do_logs() {
  # tail ends when the trainer it follows exits.
  ssh_workers "$log_worker" "tail -n +1 -F --pid=\"\$(cat $pid_file)\" $log_file"
}

do_stop() {
  ssh_workers all "kill -TERM \"\$(cat $pid_file)\""
}

do_status() {
  step gcloud compute tpus queued-resources describe "$name" "${gcloud_scope[@]}"
}

do_delete() {
  step gcloud compute tpus queued-resources delete "$name" "${gcloud_scope[@]}" --force --quiet
}

# Compile the run for the accelerator here before a TPU is created or a run started: a run that cannot fit
# never costs an hour of a slice. The report goes to a local directory, not the (remote) workdir.
do_preflight() {
  local report_dir="${TMPDIR:-/tmp}/smartvlm-preflight-$name"
  step "${PYTHON:-python3}" -m smartvlm_jax.main "${main_args[@]}" --workdir="$report_dir" \
    "--compile_only=tpu:$accelerator" --compile_only_search=2
}

cd "$repo_root" # git archive packs this checkout
if ((preflight)) && ((${#main_args[@]})) && [[ " ${commands[*]} " =~ \ (create|run)\  ]]; then
  do_preflight
fi
for c in "${commands[@]}"; do
  "do_$c"
done
