#!/usr/bin/env bash
# Batch-1 CPU latency of every exported model: ETF (etf-run, oneDNN) against ONNX Runtime
# (npm onnxruntime-node, the peer), same thread count, same input, same machine, same run.
# Prints a table with the ratio ETF / ONNX Runtime (below 1 = ETF faster), ETF's load time
# and peak resident memory against the model's file size.
#   bench/cpu_models.sh [MODEL ...]      THREADS=2 ITERS=30 MODELS_DIR=models
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
threads=${THREADS:-2}
iters=${ITERS:-30}
models_dir=${MODELS_DIR:-models}
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(resnet18 resnet50 mobilenet_v2 squeezenet1_1 densenet121 efficientnet_b0 transformer)

scripts/setup.sh
scripts/setup.sh --models
scripts/build.sh build >/dev/null
for m in "${models[@]}"; do
  [ -f "$models_dir/$m/model.onnx" ] || /usr/bin/python3 scripts/export_models.py "$models_dir" --only "$m" >/dev/null
done
if [ ! -d bench/node_modules/onnxruntime-node ]; then
  (cd bench && npm install --ignore-scripts --no-audit --no-fund >/dev/null)
fi

printf 'CPU batch-1 latency, %s threads, %s runs (median), %s\n' "$threads" "$iters" "$(date -u +%F)"
printf '%-16s %10s %10s %8s %10s %10s %10s\n' model "etf ms" "ort ms" "etf/ort" "load ms" "rss MB" "file MB"
for m in "${models[@]}"; do
  dir="$models_dir/$m"
  shape=$(/usr/bin/python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['input_shape'])))" "$dir/meta.json")
  out=$(build/etf-run "$dir/model.onnx" --threads "$threads" --iters "$iters" --input "$dir/input.bin")
  etf=$(awk '$1 == "p50" {print $2}' <<<"$out")
  load=$(sed -n 's/.*loaded in \([0-9.]*\) ms (+\([0-9.]*\) ms.*/\1 \2/p' <<<"$out" | awk '{print $1 + $2}')
  rss=$(awk '/peak resident memory/ {print $4}' <<<"$out")
  ort=$(node bench/ort_latency.js "$dir/model.onnx" "$dir/input.bin" "$shape" "$threads" "$iters" |
        /usr/bin/python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["p50_ms"])')
  file_mb=$(awk -v b="$(stat -c %s "$dir/model.onnx")" 'BEGIN {printf "%.1f", b / 1048576}')
  printf '%-16s %10s %10s %8.2f %10.1f %10s %10s\n' "$m" "$etf" "$ort" \
    "$(awk -v a="$etf" -v b="$ort" 'BEGIN {print a / b}')" "$load" "$rss" "$file_mb"
done
