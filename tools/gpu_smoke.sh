#!/usr/bin/env bash
# GPU smoke check of an installed checkout (`make install MXNET=cu112` first; `make gpu-smoke` runs it).
# Under ten minutes on one machine: (1) import mxnet-cu112 and see the GPUs (and check the sonames its
# libmxnet.so needs against the pins of constraints-cu112.txt), (2) one convolution on gpu(0)
# against the CPU's, (3) 20 steps of mfnr_stn on a tiny synthetic set at fp32 and at fp16 on every visible
# GPU (no --gpus: the automatic choice), (4) the fp32 run resumed on another device count (one GPU, or the
# CPU when there is only one) for 10 more steps.  Each step prints PASS/FAIL; the exit status is the
# number of failed steps.  WORK=DIR keeps the files (default: a temporary folder, removed).
# SMOKE_CPU=1 runs the plumbing of steps 3-4 on the CPU (fp32 only) where no GPU exists: it checks the
# script, not the GPU path.  Not run where this package was built (no GPU there).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
CLI=("$PY" -m shrinkteanet)
WORK="${WORK:-}"
if [ -z "$WORK" ]; then WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT; else mkdir -p "$WORK"; fi
CPU_ONLY="${SMOKE_CPU:-0}"
FAILED=0
START=$SECONDS

step() {  # step NAME CMD...: run, print PASS/FAIL with the seconds it took
  local name="$1" t0=$SECONDS; shift
  if "$@" >"$WORK/$name.log" 2>&1; then echo "PASS $name ($((SECONDS - t0)) s)"
  else echo "FAIL $name ($((SECONDS - t0)) s): last lines of $WORK/$name.log"; tail -n 5 "$WORK/$name.log"
    FAILED=$((FAILED + 1)); fi
}

# (1) import: a CUDA build that sees at least one GPU
NGPU=$("$PY" -c "import mxnet as mx, shrinkteanet; print(mx.context.num_gpus() if mx.runtime.Features().is_enabled('CUDA') else 0)" 2>"$WORK/import.log" || echo 0)
if [ "$CPU_ONLY" = 1 ]; then NGPU=0; echo "SMOKE_CPU=1: the plumbing on the CPU, no GPU check"
elif [ "${NGPU:-0}" -ge 1 ]; then echo "PASS import (mxnet CUDA build, $NGPU GPU(s))"
else echo "FAIL import: no CUDA build or no GPU visible"; cat "$WORK/import.log"; exit 1; fi

# (1b) the CUDA sonames the installed libmxnet.so needs: each provided by a pin of constraints-cu112.txt
# (core._cuda.check_pins); differences from the table the CPU-only suite checks (CU112_NEEDED) are printed
sonames() {
  ROOT="$ROOT" "$PY" - <<'PY'
import importlib.util, os
from shrinkteanet.core import _cuda
lib = os.path.join(list(importlib.util.find_spec("mxnet").submodule_search_locations)[0], "libmxnet.so")
needed = [s for s in _cuda.needed_sonames(lib) if s.startswith(("libcu", "libnv", "libnccl"))]
print("CUDA sonames of libmxnet.so:", " ".join(needed))
print("not in CU112_NEEDED:", sorted(set(needed) - set(_cuda.CU112_NEEDED)) or "none",
      "| in the table, not needed:", sorted(set(_cuda.CU112_NEEDED) - set(needed)) or "none")
problems = _cuda.check_pins(needed, _cuda.read_pins(open(os.path.join(os.environ["ROOT"], "constraints-cu112.txt")).read()))
assert not problems, problems
PY
}
[ "$CPU_ONLY" = 1 ] || step sonames sonames

# (2) one convolution on gpu(0), equal to the CPU's within float32 rounding
conv() {
  "$PY" - <<'PY'
import mxnet as mx, numpy as np
x = np.random.RandomState(0).randn(2, 3, 16, 16).astype("f4"); w = np.random.RandomState(1).randn(8, 3, 3, 3).astype("f4")
run = lambda c: mx.nd.Convolution(mx.nd.array(x, ctx=c), mx.nd.array(w, ctx=c), kernel=(3, 3), num_filter=8, no_bias=True).asnumpy()
g, c = run(mx.gpu(0)), run(mx.cpu())
assert np.allclose(g, c, rtol=1e-3, atol=1e-3), float(np.abs(g - c).max())
print("max |gpu - cpu| =", float(np.abs(g - c).max()))
PY
}
[ "$CPU_ONLY" = 1 ] || step convolution conv

# (3) a tiny set (16 ids x 8 images, 32x32) and a tiny r18 teacher (trained on the CPU, seconds)
"$PY" - "$WORK" <<'PY' || { echo "FAIL tiny set/teacher"; exit 1; }
import sys
from shrinkteanet.study.tiny import train_overrides, train_tiny_teacher, write_tiny_set
work = sys.argv[1]
data = write_tiny_set(f"{work}/set", ids=16, per=8, with_bin=False)
open(f"{work}/teacher", "w").write(train_tiny_teacher(data, f"{work}/teacher_run"))
open(f"{work}/overrides", "w").write("\n".join(train_overrides(data)) + "\n")
PY
mapfile -t OV < "$WORK/overrides"
TEACHER="$(cat "$WORK/teacher")"
N=$((NGPU > 0 ? NGPU : 1))
GPU_ARGS=(); [ "$NGPU" = 0 ] && GPU_ARGS=(--gpus '')
train() {  # train NAME [flags/overrides...]: 8 images per device, a checkpoint every 10 steps
  local name="$1"; shift
  "${CLI[@]}" train --config mfnr_stn --teacher "$TEACHER" --out "$WORK/$name" --json "$WORK/$name.json" \
    "${OV[@]}" "batch_size=$((8 * N))" ckpt_every=10 "$@"
}
check() {  # check NAME STEPS: the summary's step count, finite losses
  "$PY" -c "import json, math, sys; s = json.load(open('$WORK/$1.json')); print(s['steps'], s['losses'], s['nonfinite_skipped']); \
assert s['steps'] == $2 and all(math.isfinite(v) for v in s['losses'].values()) and s['nonfinite_skipped'] < $2"
}
step "fp32-${N}dev" bash -c "$(declare -f train check); $(declare -p CLI OV TEACHER WORK N PY GPU_ARGS); \
  train fp32 max_batches=20 \"\${GPU_ARGS[@]}\" && check fp32 20"
[ "$CPU_ONLY" = 1 ] || step "fp16-${N}dev" bash -c "$(declare -f train check); $(declare -p CLI OV TEACHER WORK N PY); \
  train fp16 max_batches=20 --fp16 && check fp16 20"

# (4) resume the fp32 run on another device count: one GPU, or the CPU when only one exists
if [ "$NGPU" -ge 2 ]; then OTHER=(--gpus 0); else OTHER=(--gpus ''); fi
step "resume-on-${OTHER[1]:-cpu}" bash -c "$(declare -f train check); $(declare -p CLI OV TEACHER WORK N PY OTHER); \
  train fp32 max_batches=30 --resume \"\${OTHER[@]}\" && check fp32 30"

echo "gpu smoke: $FAILED failed step(s), $((SECONDS - START)) s"
exit "$FAILED"
