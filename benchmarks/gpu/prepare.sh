#!/usr/bin/env bash
# Run HERE (with network to PyPI) before a session's call to a lent GPU machine: downloads the Python
# packages that machine's image lacks (benchmarks/gpu/wheels.txt) as cp312 manylinux x86-64 wheels into
# .gpu_wheels/ (git-ignored), then checks that they complete the image (check_wheels.py: every dependency
# carried or on the device, the project's requirements met, all of it within the 64 MiB that may travel).
# Then call the device tool's run with carry [".gpu_wheels"] and the command `bash benchmarks/gpu/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.gpu_wheels
python=${PYTHON:-python3}
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
grep -v '^\s*#' benchmarks/gpu/wheels.txt | grep -v '^\s*$' >"$dest.tmp/requirements.txt"
start=$(date +%s)
# --no-deps: wheels.txt lists every package the device lacks; check_wheels.py proves the list complete.
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest.tmp" -r "$dest.tmp/requirements.txt" 2> >(grep -v "^WARNING: Location" >&2)
# pure-Python packages published only as source: build their (py3-none-any) wheels here
sed -n 's/^# build: //p' benchmarks/gpu/wheels.txt | xargs -r "$python" -m pip wheel -q --no-deps -w "$dest.tmp" \
  2> >(grep -v "^WARNING: Location" >&2)
rm "$dest.tmp/requirements.txt"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "downloaded $(find "$dest" -name '*.whl' | wc -l) wheels in $(($(date +%s) - start)) s:"
ls "$dest"
"$python" benchmarks/gpu/check_wheels.py --wheels "$dest"
