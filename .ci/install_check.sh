#!/usr/bin/env bash
# CI: a plain `pip install .` (no requirements file) into a fresh venv gives a package whose smoke job runs.
#   1. fresh venv, `pip install .`: only pyproject.toml's dependencies (so nothing undeclared: no torch,
#      no pytest); the installed files hold no tests, no PyTorch port, no tiny-tower test helpers;
#   2. the smoke config through the console script `smartvlm-train`, run from outside the checkout (the
#      package is the installed one), shortened: 40 puzzles of each family, 2 epochs;
#   3. `pip install .[tensorboard]`, and TensorBoard reads the run's event files.
#   .ci/install_check.sh [--keep]     # --keep: leave the venv and the run (path printed)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
keep=0
[[ ${1:-} == --keep ]] && keep=1
work=$(mktemp -d "${TMPDIR:-/tmp}/smartvlm_install.XXXXXX")
((keep)) || trap 'rm -rf "$work"' EXIT
start=$(date +%s)
# The checkout's files (tracked and not ignored) in a copy: setuptools builds in the source folder and
# would package whatever an earlier build left in build/lib (moved or deleted modules included).
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard |
  tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$work/src"
python3 -m venv "$work/venv"
py=$work/venv/bin/python
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q "$work/src"
echo "install_check: pip install . in $(($(date +%s) - start)) s"

stray=$("$py" -m pip show -f smartvlm_jax | grep -E 'torch_port|tiny_towers|(^|/)tests/' || true)
[[ -z $stray ]] || { echo "install_check: the package ships test code:"$'\n'"$stray" >&2; exit 1; }
for module in torch pytest; do
  if "$py" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)"; then
    echo "install_check: $module is installed, so the smoke run cannot show that it is not needed" >&2
    exit 1
  fi
done

cd "$work"  # not the checkout: smartvlm_jax is imported from the venv
export SMARTVLM_JAX_CACHE=$work/cache  # the oneDNN kernels built for this venv go with it
"$py" -c "import smartvlm_jax, sys; sys.exit(not smartvlm_jax.__file__.startswith('$work/venv/'))" ||
  { echo "install_check: smartvlm_jax is not imported from the venv" >&2; exit 1; }
run_start=$(date +%s)
"$work/venv/bin/smartvlm-train" --config "$repo/configs/smoke.py" --workdir "$work/smoke" \
  --config.synthetic.per_puzzle=40 --config.data.data_tot=40 --config.num_epochs=2 >"$work/smoke.log" 2>&1 ||
  { tail -n 40 "$work/smoke.log" >&2; echo "install_check: the smoke run failed" >&2; exit 1; }
grep -E '^\| \*\*all\*\*' "$work/smoke.log"
echo "install_check: smoke run through smartvlm-train in $(($(date +%s) - run_start)) s"

"$py" -m pip install -q "$work/src[tensorboard]"
"$py" - "$work/smoke/tensorboard" <<'EOF'
import sys

from tensorboard.backend.event_processing import event_multiplexer

mux = event_multiplexer.EventMultiplexer().AddRunsFromDirectory(sys.argv[1])
mux.Reload()
tags = {tag for run in mux.Runs().values() for tag in run["scalars"]}
assert {"train/loss", "val/S_acc"} <= tags, tags
print(f"install_check: tensorboard reads the run's events ({len(tags)} scalar tags)")
EOF
((keep)) && echo "install_check: kept $work"
echo "install_check: done in $(($(date +%s) - start)) s"
