#!/usr/bin/env bash
# The GPU measurements still owed, batched for a lent machine. A task drawn for one now has 15
# minutes of device time in all (the machine's start, 1-2 min, included; 10 min at most a call), so
# run issue 9's GPU comparison first, in one call, and the others (issues 7 and 8, ended blocked
# on their H100 lines) only if a second call still fits:
#
# The device machine has python3 with torch, torchvision, opencv-python-headless, numpy, click,
# pyyaml, tqdm, h5py, matplotlib, pytest(-timeout), hypothesis, and no network. What datakit needs
# beyond that travels as wheels (about 400 KB):
#
#   here:   bash bench/gpu_session.sh wheels            # once: fills .whl/ (git-ignored)
#   device: run(carry=[".whl"], timeout_s=580, command="bash bench/gpu_session.sh compare")
#   then, if 4+ minutes are left:
#           run(carry=[".whl"], timeout_s=..., command="bash bench/gpu_session.sh tests loader")
#           run(carry=[".whl"], timeout_s=..., command="bash bench/gpu_session.sh train")
#   and give_back when done.
#
# Expected wall time on one H100 (16 cores), from the session-1 runs: compare ~7-9 min, tests ~2
# min, loader ~4 min, train ~6 min (torch.compile warm-up ~2 min). `compare` resumes its finished
# runs from bench/out/gpu-compare only while the same machine is held (a cut-off compare: call it
# again at once); its records.jsonl comes back in $OUT either way.
# Logs and summaries go to $OUT (what the device tool copies back: at most 8 files per call), or
# bench/out/gpu when $OUT is unset.
set -euo pipefail
cd "$(dirname "$0")/.."

for part in "$@"; do
  case $part in
  wheels | tests | loader | train | compare) ;;
  *)
    echo "unknown part $part (wheels, tests, loader, train, compare)" >&2
    exit 2
    ;;
  esac
done
[[ $# -gt 0 ]] || { echo "usage: bash bench/gpu_session.sh PART... (wheels, tests, loader, train, compare)" >&2; exit 2; }

PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
WHEELS=(webdataset==1.0.2 braceexpand==0.1.7 isal==1.9.1)
RESULTS=${OUT:-bench/out/gpu}
mkdir -p "$RESULTS"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONUNBUFFERED=1

setup() {
  if [[ -d .whl ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  python3 - <<'EOF' | tee -a "$RESULTS/host.txt"
import torch, torchvision, webdataset, datakit
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {gpu}")
EOF
}

for part in "$@"; do
  case $part in
  wheels)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
    ls -l .whl
    grep -qxF '/.whl/' .gitignore || echo "note: .whl/ must be git-ignored to be carried" >&2
    continue
    ;;
  esac
  [[ -n ${_SETUP:-} ]] || { setup; _SETUP=1; }
  case $part in
  tests) # the GPU-marked tests (nvJPEG decode hazard, GPU views vs CPU, CUDA training steps)
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_views.py tests/test_loader.py \
      tests/test_train.py 2>&1 | tee "$RESULTS/tests.txt"
    ;;
  loader) # issue 7: CPU-path scaling with workers, and the GPU path (docs/benchmarks.md)
    ds=/tmp/dk-loader
    [[ -f $ds-up/_info.json ]] || {
      python3 bench/loader.py --make $ds --num 512 --size 640x480 --convert-workers 16 \
        --repack-up $ds-up --no-per-core
    }
    python3 bench/loader.py --data $ds-up --rounds 3 --samples 192 --workers 1,2,4,8,12,16 \
      2>&1 | tee "$RESULTS/loader-scaling.txt"
    python3 bench/loader.py --data $ds-up --gpu --no-per-core --workers 16 \
      2>&1 | tee "$RESULTS/loader-gpu.txt"
    ;;
  train) # issue 8: end-to-end (GPU views, prefetch 0 and 2) against model-only, compiled bf16
    python3 bench/train.py --make /tmp/dk-train --num 1000 --size 320x240 --convert-workers 16 \
      --e2e-workers 14 --variants bf16-cl-compile --prefetch 0,2 --json "$RESULTS/train.json" \
      2>&1 | tee "$RESULTS/train.txt"
    ;;
  compare) # issue 9: the five methods at the GPU preset, three seeds (docs/results.md, section 2)
    # stopped inside the call's limit (COMPARE_S, default 540 s of a timeout_s 580 call), so the
    # records of the runs that finished still come back; `--from-records` rebuilds their table
    rc=0
    timeout "${COMPARE_S:-540}" python3 bench/compare.py --out bench/out/gpu-compare --jobs 4 \
      --workers 3 --steps 300 2>&1 | tee "$RESULTS/compare.txt" || rc=$?
    ((rc == 0)) || echo "compare: exit $rc (124: stopped at ${COMPARE_S:-540} s)" | tee -a "$RESULTS/compare.txt"
    for f in summary.json table.md records.jsonl results.png; do
      if [[ -f bench/out/gpu-compare/$f ]]; then cp "bench/out/gpu-compare/$f" "$RESULTS/"; fi
    done
    ;;
  esac
done
