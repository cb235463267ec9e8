#!/usr/bin/env bash
# Submit smartvlm_jax.main to SLURM: N nodes x G GPUs, one JAX process per node owning its G GPUs.
#
# The job script derives the coordinator (first node of the allocation) and the process count from SLURM;
# each process takes its id from SLURM_PROCID (config.distributed.process_id=-1 reads it).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu_slurm.sh [options] [--dry-run] [-h] -- MAIN_ARGS...

Submits `python -m smartvlm_jax.main MAIN_ARGS` as one SLURM job (sbatch; the job script arrives on
stdin), started with srun on every node. The repository and the --workdir in MAIN_ARGS must be on a
filesystem all nodes share; the virtual environment is created beforehand with the README's GPU command.

  -N, --nodes N           nodes (default 1)
  -g, --gpus-per-node G   GPUs per node (default 8)
  -c, --cpus-per-node C   CPU cores per node for data loading (default 32)
  -t, --time HH:MM:SS     wall-clock limit (default 24:00:00)
  -p, --partition NAME    SLURM partition (default: the cluster's default)
  -A, --account NAME      SLURM account (default: the user's default)
  -J, --job-name NAME     job name (default smartvlm_jax)
      --port PORT         coordinator port on the first node (default 12355)
      --repo DIR          the checkout the nodes run (default: the one holding this script)
      --venv DIR          virtual environment to activate (default: REPO/.venv)
      --logs DIR          where SLURM writes the job's output, %j = job id (default: REPO/logs)
      --gpu-type TYPE     h100, h200 or a100 (SXM; default h100): the preflight's compile target
      --no-preflight      skip the local check before sbatch: MAIN_ARGS compiled for N hosts x G GPUs of
                          --gpu-type on this machine (--compile_only=gpu:TYPE:NxG; needs the package
                          and its [gpu-compile] extra here), refusing a run whose programs do not fit
      --follow            after submitting, stream the job's output (tail -F) until it ends
      --dry-run           print the sbatch command and the job script, submit nothing
  -h, --help              this help

A node that fails makes srun stop the others (--kill-on-bad-exit); a peer that hangs or dies is detected
by JAX after --config.distributed.heartbeat_timeout_s, and peers that never start are given up after
--config.distributed.initialization_timeout_s.

Example:
  launch/gpu_slurm.sh -N 2 -g 8 -p gpu -- --config configs/smarter.py --workdir /shared/workdirs/smarter
EOF
}

die() {
  echo "gpu_slurm.sh: $*" >&2
  exit 2
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nodes=1
gpus=8
cpus=32
time_limit="24:00:00"
partition=""
account=""
job_name="smartvlm_jax"
port=12355
venv=""
logs=""
follow=0
dry_run=0
gpu_type=h100
preflight=1
while (($#)); do
  case "$1" in
    -N | --nodes) nodes="${2:?$1 needs a value}"; shift 2 ;;
    -g | --gpus-per-node) gpus="${2:?$1 needs a value}"; shift 2 ;;
    -c | --cpus-per-node) cpus="${2:?$1 needs a value}"; shift 2 ;;
    -t | --time) time_limit="${2:?$1 needs a value}"; shift 2 ;;
    -p | --partition) partition="${2:?$1 needs a value}"; shift 2 ;;
    -A | --account) account="${2:?$1 needs a value}"; shift 2 ;;
    -J | --job-name) job_name="${2:?$1 needs a value}"; shift 2 ;;
    --port) port="${2:?$1 needs a value}"; shift 2 ;;
    --repo) repo="${2:?$1 needs a value}"; shift 2 ;;
    --venv) venv="${2:?$1 needs a value}"; shift 2 ;;
    --logs) logs="${2:?$1 needs a value}"; shift 2 ;;
    --gpu-type) gpu_type="${2:?$1 needs a value}"; shift 2 ;;
    --no-preflight) preflight=0; shift ;;
    --follow) follow=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (main's flags go after --; see -h)" ;;
  esac
done
main_args=("$@")

for pair in "nodes:$nodes" "gpus-per-node:$gpus" "cpus-per-node:$cpus" "port:$port"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer, got '${pair#*:}'"
done
[[ "$time_limit" =~ ^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$ ]] || die "--time must look like HH:MM:SS, got '$time_limit'"
[[ "$gpu_type" =~ ^(h100|h200|a100)$ ]] || die "--gpu-type must be h100, h200 or a100, got '$gpu_type'"
((${#main_args[@]})) || die "no arguments for smartvlm_jax.main after -- (need at least --config and --workdir)"
venv="${venv:-$repo/.venv}"
logs="${logs:-$repo/logs}"

sbatch_cmd=(sbatch --parsable "--job-name=$job_name" "--nodes=$nodes" --ntasks-per-node=1
  "--gpus-per-node=$gpus" "--cpus-per-task=$cpus" "--time=$time_limit" "--output=$logs/%x-%j.out")
[[ -n "$partition" ]] && sbatch_cmd+=("--partition=$partition")
[[ -n "$account" ]] && sbatch_cmd+=("--account=$account")

# The job script: values known now are quoted in; SLURM's variables expand on the nodes.
read -r -d '' job_script <<EOF || true
#!/usr/bin/env bash
set -euo pipefail
cd $(printf '%q' "$repo")
. $(printf '%q' "$venv/bin/activate")
coordinator="\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1):$port"
echo "smartvlm_jax: \$SLURM_NNODES processes x $gpus GPUs, coordinator \$coordinator"
srun --kill-on-bad-exit=1 --ntasks-per-node=1 \\
  python -m smartvlm_jax.main $(printf '%q ' "${main_args[@]}")\\
  --config.distributed.mode=explicit \\
  --config.distributed.coordinator_address="\$coordinator" \\
  --config.distributed.num_processes="\$SLURM_NNODES"
EOF

# Compile the run for the allocation's GPUs here before the job is queued: a run that cannot fit never
# costs an allocation. The report goes to a local directory, not the job's workdir.
preflight_cmd=("${PYTHON:-python3}" -m smartvlm_jax.main "${main_args[@]}"
  "--workdir=${TMPDIR:-/tmp}/smartvlm-preflight-$job_name" "--compile_only=gpu:$gpu_type:${nodes}x$gpus"
  --compile_only_search=2)

if ((dry_run)); then
  ((preflight)) && echo "(cd $(printf '%q' "$repo") && $(printf '%q ' "${preflight_cmd[@]}"| sed 's/ $//'))"
  echo "mkdir -p $(printf '%q' "$logs")"
  echo "$(printf '%q ' "${sbatch_cmd[@]}")<<'JOB'"
  echo "$job_script"
  echo "JOB"
  exit 0
fi

command -v sbatch >/dev/null || die "sbatch not found: run this on a SLURM login node"
if ((preflight)); then
  (cd "$repo" && "${preflight_cmd[@]}") || die "preflight: the run does not compile or fit on ${nodes}x$gpus $gpu_type (above; --no-preflight skips the check)"
fi
mkdir -p "$logs"
job_id="$("${sbatch_cmd[@]}" <<<"$job_script")"
job_id="${job_id%%;*}"
out="$logs/$job_name-$job_id.out"
echo "gpu_slurm.sh: submitted job $job_id; output in $out"
if ((follow)); then
  # Follow the output until the job leaves the queue.
  while [[ ! -e "$out" ]]; do sleep 5; done
  tail -n +1 -F "$out" &
  tail_pid=$!
  while [[ -n "$(squeue -h -j "$job_id" 2>/dev/null)" ]]; do sleep 10; done
  kill "$tail_pid"
  sacct -j "$job_id" --format=JobID,State,ExitCode,Elapsed
fi
