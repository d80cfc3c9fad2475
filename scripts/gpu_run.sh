#!/usr/bin/env bash
# Runs the CUDA device on a GPU machine with prebuilt binaries: the device's unit tests, then
# every exported model of models/ through etf-run, each output compared with PyTorch's.
#
#   scripts/gpu_run.sh [BUILD_DIR]        (from the repository root; BUILD_DIR = build-cuda)
#
# Results go to $OUT (default BUILD_DIR/gpu-results): test_device_cuda.log, NAME.log and
# NAME.out per model, and gpu_results.txt, a table of latency and max|diff|/max|ref| per model.
# A model that is missing or fails is recorded as such and the run goes on. The comparison
# needs python3 only (no numpy). Libraries the binaries need and the machine lacks on its
# loader path (cuDNN and cuBLAS from Python wheels, or any in BUILD_DIR/libs or in
# $ETF_GPU_LIBS) are added to LD_LIBRARY_PATH.
set -u

build=${1:-build-cuda}
out=${OUT:-$build/gpu-results}
iters=${ETF_GPU_ITERS:-50}
tolerance=${ETF_GPU_TOLERANCE:-1e-4}
models=(resnet18 resnet50 mobilenet_v2 squeezenet1_1 densenet121 efficientnet_b0 transformer)
mkdir -p "$out"
table=$out/gpu_results.txt

if [ ! -x "$build/etf-run" ]; then
  echo "gpu_run: $build/etf-run not found or not executable (build it with ETF_CUDA=ON)" >&2
  exit 2
fi

# ---- Libraries
. "$(dirname "$0")/gpu_env.sh" "$build"

{
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  echo "== libraries etf-run resolves"
  ldd "$build/etf-run" | grep -E 'cudnn|cublas|cudart|not found' || true
} | tee "$out/machine.txt"

# ---- Unit tests
echo "== test_device_cuda"
test_status=missing
if [ -x "$build/tests/test_device_cuda" ]; then
  "$build/tests/test_device_cuda" >"$out/test_device_cuda.log" 2>&1
  rc=$?
  cat "$out/test_device_cuda.log"
  passed=$(grep -c '^\[       OK \]' "$out/test_device_cuda.log")
  skipped=$(grep -c '^\[  SKIPPED \]' "$out/test_device_cuda.log")
  failed=$(grep -c '^\[  FAILED  \]' "$out/test_device_cuda.log")
  test_status="exit $rc: $passed passed, $failed failed, $skipped skipped"
fi
echo "test_device_cuda: $test_status"

# ---- Models
compare_py='
import array, math, sys
def load(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a
got, ref = load(sys.argv[1]), load(sys.argv[2])
if len(got) != len(ref):
    print("size %d!=%d" % (len(got), len(ref)))
    sys.exit(1)
if any(math.isnan(g) or math.isinf(g) for g in got):
    print("non-finite")
    sys.exit(1)
diff = max((abs(g - r) for g, r in zip(got, ref)), default=0.0)
scale = max((abs(r) for r in ref), default=0.0)
rel = diff / scale if scale > 0 else diff
print("%.3e %.3e %.3e %s" % (diff, scale, rel, "PASS" if rel <= float(sys.argv[3]) else "FAIL"))
'

printf '%-16s %-8s %9s %9s %11s %11s %11s  %s\n' model status p50_ms p90_ms max_diff max_ref \
  diff/ref note >"$table"
for name in "${models[@]}"; do
  dir=models/$name
  log=$out/$name.log
  echo "== $name"
  if [ ! -f "$dir/model.onnx" ] || [ ! -f "$dir/input.bin" ] || [ ! -f "$dir/output.bin" ]; then
    printf '%-16s %-8s %9s %9s %11s %11s %11s  %s\n' "$name" missing - - - - - \
      "no $dir/{model.onnx,input.bin,output.bin}" >>"$table"
    echo "missing"
    continue
  fi
  "$build/etf-run" "$dir/model.onnx" --device cuda --iters "$iters" --input "$dir/input.bin" \
    --output "$out/$name.out" >"$log" 2>&1
  rc=$?
  head -4 "$log"
  if [ $rc -ne 0 ]; then
    note=$(grep -m1 -E 'etf-run:|device cuda' "$log" | cut -c1-160)
    printf '%-16s %-8s %9s %9s %11s %11s %11s  %s\n' "$name" "error" - - - - - \
      "exit $rc: ${note:-see $name.log}" >>"$table"
    continue
  fi
  p50=$(awk '/p50/ {print $2; exit}' "$log")
  p90=$(awk '/p90/ {print $2; exit}' "$log")
  cmp=$(python3 -c "$compare_py" "$out/$name.out" "$dir/output.bin" "$tolerance" 2>&1)
  read -r diff scale rel verdict <<<"$cmp"
  if [ -z "${verdict:-}" ]; then
    printf '%-16s %-8s %9s %9s %11s %11s %11s  %s\n' "$name" "FAIL" "${p50:--}" "${p90:--}" \
      - - - "comparison: $cmp" >>"$table"
  else
    printf '%-16s %-8s %9s %9s %11s %11s %11s  %s\n' "$name" "$verdict" "${p50:--}" \
      "${p90:--}" "$diff" "$scale" "$rel" "tolerance $tolerance" >>"$table"
  fi
  verdict=
done
{
  echo
  echo "test_device_cuda: $test_status"
} >>"$table"
echo "== results ($table)"
cat "$table"
