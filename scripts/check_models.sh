#!/usr/bin/env bash
# Correctness of every exported model on a device against PyTorch: for the fixed input and
# for each fresh random input, max |ours - PyTorch| / max |PyTorch| must be <= 1e-4.
#   scripts/check_models.sh [--device cpu|cuda] [--build DIR] [MODEL ...]   (MODELS_DIR=models)
# Models without input_K.bin are re-exported with 3 random inputs first.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
device=cpu
build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) break ;;
  esac
done
models_dir=${MODELS_DIR:-models}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(resnet18 resnet50 mobilenet_v2 squeezenet1_1 densenet121 efficientnet_b0 transformer)
for m in "${models[@]}"; do
  [ -f "$models_dir/$m/input_0.bin" ] ||
    /usr/bin/python3 scripts/export_models.py "$models_dir" --only "$m" --random-inputs 3 >/dev/null
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
worst=0
printf '%-16s %-10s %12s %12s\n' model input "max rel err" "fp32 noise"
status=0
for m in "${models[@]}"; do
  dir="$models_dir/$m"
  noise=$(/usr/bin/python3 -c "import json,sys; print('%.1e' % json.load(open(sys.argv[1]))['fp32_noise'])" "$dir/meta.json")
  for input in "$dir"/input.bin "$dir"/input_*.bin; do
    ref=${input/input/output}
    "$build"/etf-run "$dir/model.onnx" --device "$device" --iters 1 --warmup 0 \
      --input "$input" --output "$tmp/out.bin" >/dev/null
    err=$(/usr/bin/python3 - "$tmp/out.bin" "$ref" <<'PY'
import array, sys
a, b = array.array('f'), array.array('f')
a.frombytes(open(sys.argv[1], 'rb').read()); b.frombytes(open(sys.argv[2], 'rb').read())
assert len(a) == len(b), (len(a), len(b))
print('%.2e' % (max(abs(x - y) for x, y in zip(a, b)) / max(abs(y) for y in b)))
PY
)
    verdict=ok
    if awk -v e="$err" 'BEGIN {exit !(e > 1e-4)}'; then verdict=FAIL; status=1; fi
    printf '%-16s %-10s %12s %12s %s\n' "$m" "$(basename "$input" .bin)" "$err" "$noise" "$verdict"
  done
done
exit $status
