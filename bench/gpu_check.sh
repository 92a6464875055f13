#!/usr/bin/env bash
# The GPU checks in one self-contained run of about 8 minutes on one CUDA GPU with PyTorch and no network: Ray and
# the packages it needs come from files (--carry), nothing is downloaded. Each table prints as it finishes; the JSON
# files and the log land in --out (small: no weights).
#
#   bash bench/gpu_check.sh                      # on the GPU host (budget 480 s, carry .device_carry, out $OUT)
#   bash bench/gpu_check.sh --tiny               # CPU smoke test of this script (tiny models, about 3 minutes)
#   bash bench/gpu_check.sh --dry-run ...        # check the options and exit (what tests/test_bench_commands.py runs)
#
# --carry DIR holds: *.whl (Ray's missing dependencies), ray*.tar.xz (Ray for this Python, an unpacked wheel
# without ray/jars), data/{MNIST,FashionMNIST,NotMNIST}/raw/*.gz. Without Ray, step 2 is skipped.
#   1. the training-loop step on the mnist configuration: reference vs fast settings (eager bf16 and the whole model
#      compiled, train.compile=full: images/s, TFLOP/s, peak memory, compile warm-up cold), then warm-up warm: a
#      second process reusing the compile cache
#   2. Ray Data -> Ray Train (one GPU worker) feeding the same step, against tensors already on the device
#   3. bf16 against float32 for a fixed number of steps: the loss difference in bits/dim
#   4. MNIST (1k labels) FlowGMM-cons for the remaining minutes: test accuracy against time, calibration, OOD AUROC
# Each script also writes its figures to bench/results/NAME.json (bench/record.py) and prints its RESULTS.md block.
set -uo pipefail
export PYTHONUNBUFFERED=1
REPO=$(cd "$(dirname "$0")/.." && pwd)
TINY=0
DRY=0
BUDGET=470
CARRY="$REPO/.device_carry"
OUTDIR="${OUT:-/tmp/gpu_check_out}"
while [ $# -gt 0 ]; do
    case "$1" in --budget|--carry|--out) [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; } ;; esac
    case "$1" in
        --tiny) TINY=1; BUDGET=240 ;;
        --dry-run) DRY=1 ;;
        --budget) BUDGET="$2"; shift ;;
        --carry) CARRY="$2"; shift ;;
        --out) OUTDIR="$2"; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$DRY" = 1 ] && { echo "gpu_check.sh: options ok (tiny=$TINY budget=$BUDGET carry=$CARRY out=$OUTDIR)"; exit 0; }
START=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
PY="${PYTHON:-python3}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
say() { echo "== $* ($(( $(date +%s) - START )) s)" | tee -a "$LOG"; }
run() {  # run STEP_SECONDS CMD...: at most STEP_SECONDS and never past the budget; output to the console and the log
    local t=$1; shift
    local l; l=$(left)
    [ "$t" -gt "$l" ] && t=$l
    if [ "$t" -le 5 ]; then say "skipped (budget spent): $*"; return 1; fi
    timeout --signal=TERM --kill-after=10 "$t" "$@" 2>&1 | tee -a "$LOG"
    return "${PIPESTATUS[0]}"
}

# 0. environment ------------------------------------------------------------------------------------------------
SITE=/tmp/gpu_check_site
mkdir -p "$SITE"
if ls "$CARRY"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$CARRY"/*.whl
fi
if ls "$CARRY"/ray*.tar.xz >/dev/null 2>&1 && [ ! -d "$SITE/ray" ]; then tar -xJf "$CARRY"/ray*.tar.xz -C "$SITE"; fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$CARRY/data/MNIST" ] && export FLOWGMM_DATA="$CARRY/data"
export FLOWGMM_HOME=/tmp/gpu_check_home RAY_AUTH_MODE=disabled
CC=/tmp/gpu_check_compile_cache
rm -rf "$CC"
HAVE_RAY=0
"$PY" -c "import ray, ray.train.torch" >/dev/null 2>&1 && HAVE_RAY=1
"$PY" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'python', sys.version.split()[0])" | tee -a "$LOG"
say "setup done (ray importable: $HAVE_RAY)"

if [ "$TINY" = 1 ]; then
    STEP=(--tiny --steps 2); WARM=(--tiny --steps 2); BF16=(--tiny --check-steps 8)
    INGEST=(--configs digits --steps 20 --workers 1); MNIST=(--tiny); FAST=()
else
    STEP=(--batch 2048 --steps 6); WARM=(--batch 2048 --steps 4); BF16=(--check-steps 100)
    INGEST=(--configs mnist --steps 10 --workers 1 train.use_gpu=true train.batch_rows=2048 train.bf16=true
            train.channels_last=true train.cpus_per_worker=4)
    MNIST=(); FAST=(train.batch_rows=2048 train.bf16=true train.channels_last=true train.compile=full)
fi
[ "$TINY" = 1 ] && BACKEND=(--backend eager) || BACKEND=()

# 1. step table (cold compile), then the warm compile warm-up in a second process --------------------------------
say "1. training step: reference vs fast settings (cold compile)"
run 300 "$PY" "$REPO/bench/bench_train_step.py" --settings reference,fast_eager,fast_full "${STEP[@]}" \
    "${BACKEND[@]}" --compile-cache "$CC" --json "$OUTDIR/step_cold.json"
say "1b. fast_full again in a new process: the compile cache is warm"
run 120 "$PY" "$REPO/bench/bench_train_step.py" --settings fast_full "${WARM[@]}" "${BACKEND[@]}" \
    --compile-cache "$CC" --json "$OUTDIR/step_warm.json" --name bench_train_step_cuda_warm_cache

# 2. Ray Data -> Ray Train feeding the step vs tensors on the device ----------------------------------------------
if [ "$HAVE_RAY" = 1 ]; then
    say "2. ingest: the training loop through Ray Train vs the same step on tensors on the device"
    run 120 "$PY" "$REPO/bench/bench_ingest.py" "${INGEST[@]}" --home "$FLOWGMM_HOME" --json "$OUTDIR/ingest.json"
else
    say "2. skipped: Ray is not importable"
fi

# 3. bf16 vs float32 -----------------------------------------------------------------------------------------------
say "3. bf16 against float32"
run 60 "$PY" "$REPO/bench/bench_train_step.py" --no-step --check-bf16 "${BF16[@]}" --json "$OUTDIR/bf16.json"

# 4. MNIST FlowGMM-cons for the remaining minutes ------------------------------------------------------------------
REMAIN=$(( $(left) - 45 ))  # evaluation (calibration, two OOD sets) and the summary after training
if [ "$REMAIN" -gt 20 ]; then
    MINUTES=$(awk "BEGIN { printf \"%.2f\", $REMAIN / 60 }")
    say "4. MNIST, 1k labels, FlowGMM-cons for $MINUTES minutes"
    run $(( REMAIN + 40 )) "$PY" "$REPO/bench/gpu_mnist.py" --minutes "$MINUTES" "${MNIST[@]}" --compile-cache "$CC" \
        --home "$FLOWGMM_HOME" \
        --json "$OUTDIR/mnist.json" "${FAST[@]}"
else
    say "4. skipped: no time left"
fi

"$PY" - "$OUTDIR" <<'EOF' | tee -a "$LOG"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
summary = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "gpu_check.json"}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))
print("results:", ", ".join(sorted(summary)), "->", out / "gpu_check.json")
EOF
say "done"
