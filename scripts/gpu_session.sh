#!/usr/bin/env bash
# The H100 session of the CUDA device, from the repository root on the GPU machine, with
# binaries prebuilt elsewhere in BUILD_DIR (the GPU machine has no cuDNN headers):
#   scripts/gpu_session.sh models     export the models with the machine's PyTorch
#   scripts/gpu_session.sh check      unit tests + every model against PyTorch (gpu_run.sh)
#   scripts/gpu_session.sh latency    batch 1 and 32: ETF vs PyTorch eager, same run
#   scripts/gpu_session.sh fairness   3 tenants x 60 s at phi 1, 0.5, 0 with NVML energy
#                                     (FAIR_SECONDS=N shortens each run, FAIR_PHIS="1 0" picks)
#   scripts/gpu_session.sh profile    per-kernel GPU time, ETF and PyTorch (PROFILE="m:b ...")
#   scripts/gpu_session.sh overhead   bench-overhead: 3 backlogged tenants against back-to-back
#   scripts/gpu_session.sh serve      etfd --device cuda --meter nvml with two bench clients
# Several steps may be given in order. Results go under $OUT (default BUILD_DIR/gpu-results).
# BUILD_DIR defaults to build-gpu.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build-gpu}
out=${OUT:-$build/gpu-results}
mkdir -p "$out"
. scripts/gpu_env.sh "$build"
models=(resnet18 resnet50 mobilenet_v2 squeezenet1_1 densenet121 efficientnet_b0 transformer)

step_models() {
  python3 scripts/export_models.py models --random-inputs 1 2>&1 | grep -v -i warn | tee "$out/export.txt"
}

step_check() {
  OUT=$out scripts/gpu_run.sh "$build"
}

# a / b with two decimals, or "-" when either is missing
ratio() {
  awk -v a="${1:-0}" -v b="${2:-0}" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "-"}'
}

step_latency() {
  # Two spans, each against its PyTorch peer in the same run: host buffer to host buffer
  # (etf-run's default: ETF's API takes host memory, as a server's requests arrive), and
  # GPU-resident (etf-run --resident: input and output stay on the device).
  local table=$out/latency.txt
  printf 'GPU latency, median of 30 runs, host wall time to the end of the GPU work\n' >"$table"
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >>"$table" 2>&1
  printf '%-16s %5s | %8s %10s %6s | %8s %10s %6s\n' model batch "etf" "torch" ratio \
    "etf" "torch" ratio >>"$table"
  printf '%-16s %5s | %-27s | %-27s\n' "" "" "host to host (ms)" "GPU-resident (ms)" >>"$table"
  for batch in 1 32; do
    python3 bench/torch_gpu_latency.py "$batch" 30 "${models[@]}" >"$out/torch_b$batch.jsonl" 2>"$out/torch_b$batch.err"
    for m in "${models[@]}"; do
      etf=$("$build/etf-run" "models/$m/model.onnx" --device cuda --batch "$batch" --iters 30 2>"$out/etf_${m}_b$batch.err" |
            awk '$1 == "p50" {print $2}')
      res=$("$build/etf-run" "models/$m/model.onnx" --device cuda --batch "$batch" --iters 30 --resident 2>>"$out/etf_${m}_b$batch.err" |
            awk '$1 == "p50" {print $2}')
      read -r host resident < <(python3 -c "import json,sys
for l in open(sys.argv[1]):
    d = json.loads(l)
    if d['model'] == sys.argv[2]: print('%.3f %.3f' % (d['p50_host_ms'], d['p50_ms']))" "$out/torch_b$batch.jsonl" "$m")
      printf '%-16s %5s | %8s %10s %6s | %8s %10s %6s\n' "$m" "$batch" "${etf:--}" "${host:--}" \
        "$(ratio "$etf" "$host")" "${res:--}" "${resident:--}" "$(ratio "$res" "$resident")" >>"$table"
    done
  done
  cat "$table"
}

step_fairness() {
  for phi in ${FAIR_PHIS:-1 05 0}; do
    local scenario=scenarios/h100_three_tenants_phi$phi.json
    if [ -n "${FAIR_SECONDS:-}" ]; then
      # A copy beside the original, so that its relative model paths still resolve.
      sed "s/\"duration_s\": [0-9]*/\"duration_s\": $FAIR_SECONDS/" "$scenario" >"scenarios/.short_phi$phi.json"
      scenario=scenarios/.short_phi$phi.json
    fi
    "$build/etf-sim" "$scenario" --report "$out/fair_phi$phi.json" \
      --timing >"$out/fair_phi$phi.txt" 2>&1
    echo "== phi $phi (exit $?)"
    cat "$out/fair_phi$phi.txt"
  done
}

step_profile() {
  local spec m b
  for spec in ${PROFILE:-resnet50:32 squeezenet1_1:32 transformer:32}; do
    m=${spec%:*} b=${spec#*:}
    echo "== $m batch $b: ETF"
    # Written whole, then shown in part (a pipe into head would cut the file short).
    "$build/etf-run" "models/$m/model.onnx" --device cuda --batch "$b" --iters 20 \
      >"$out/profile_etf_${m}_b$b.txt" 2>&1
    head -n 40 "$out/profile_etf_${m}_b$b.txt"
    echo "== $m batch $b: PyTorch"
    python3 bench/torch_gpu_profile.py "$m" "$b" 2>&1 | tee "$out/profile_torch_${m}_b$b.txt"
  done
}

step_overhead() {
  "$build/bench-overhead" --device cuda --seconds "${OVERHEAD_SECONDS:-10}" \
    models/resnet50/model.onnx:32 models/mobilenet_v2/model.onnx:1 \
    models/transformer/model.onnx:8 2>&1 | tee "$out/overhead.txt"
}

step_serve() {
  local log=$out/etfd.log
  "$build/etfd" --quantum-us 40000 --phi 0.5 --device cuda --meter nvml --models models \
    --listen 127.0.0.1:0 >"$log" 2>&1 &
  local server=$!
  local addr=""
  for _ in $(seq 300); do
    addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log")
    [ -n "$addr" ] && break
    sleep 0.1
  done
  if [ -z "$addr" ]; then
    echo "etfd did not start:"; cat "$log"; kill "$server" 2>/dev/null; return 1
  fi
  "$build/etf" bench resnet18 --server "$addr" --threads 2 --duration 15 >"$out/serve_resnet18.txt" 2>&1 &
  local a=$!
  "$build/etf" bench mobilenet_v2 --server "$addr" --threads 2 --duration 15 >"$out/serve_mobilenet.txt" 2>&1 &
  local b=$!
  sleep 13
  "$build/etf" stats --server "$addr" >"$out/serve_stats.txt" 2>&1
  wait "$a" "$b"
  kill -INT "$server"
  wait "$server"
  echo "== etfd exit $?"
  tail -n 5 "$out/serve_resnet18.txt" "$out/serve_mobilenet.txt"
  cat "$out/serve_stats.txt"
  sed -n '/listening on/!p' "$log" | tail -n 20
}

[ $# -gt 0 ] || set -- models check latency fairness serve
for step in "$@"; do
  echo "==== $step"
  "step_$step"
done
