#!/usr/bin/env bash
# Installs, builds and runs the demo:
#  1. the ETF scheduler in the simulator, with profiles measured on a Jetson TX2: the
#     original ETF example, then four tenants with a late joiner and a priority change;
#  2. the ETF server on this machine's CPU (oneDNN) with three client tenants running
#     real ONNX models, then the server's summary of time and energy per model.
#     (Set DEMO_SIM_ONLY=1 to skip part 2, which installs PyTorch from Debian to export
#     the models the first time: ~1.4 GB and a few minutes.)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
scripts/build.sh build >/dev/null
mkdir -p results
echo "== The original ETF example: two ResNet-50 tenants at 1300.5 and 726.75 MHz, phi 0.7"
build/etf-sim scenarios/tx2_resnet50_pair.json --report results/tx2_resnet50_pair.json
echo
echo "== Four tenants: mixed models, clocks and priorities, a late joiner, a priority change"
build/etf-sim scenarios/tx2_demo.json --report results/tx2_demo.json --tasks results/tx2_demo_tasks.csv
echo
[ "${DEMO_SIM_ONLY:-0}" = 1 ] && exit 0

device=cpu
[ -n "${ETF_DEMO_DEVICE:-}" ] && device=$ETF_DEMO_DEVICE
models=(resnet18 mobilenet_v2 squeezenet1_1)
scripts/setup.sh --models
for m in "${models[@]}"; do
  [ -f "models/$m/model.onnx" ] || /usr/bin/python3 scripts/export_models.py models --only "$m" >/dev/null 2>&1
done

echo "== The ETF server on the $device: three tenants (nice 0, 0, 5), phi 1, Q 40 ms, 20 s"
log=$(mktemp)
build/etfd --quantum-us 40000 --phi 1 --device "$device" --models models --threads 2 \
  --listen 127.0.0.1:0 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$log")
[ -n "$addr" ] || { cat "$log"; exit 1; }
echo "server at $addr"
pids=()
prio=(0 0 5)
for i in 0 1 2; do
  build/etf bench "${models[$i]}" --server "$addr" --priority "${prio[$i]}" --threads 2 \
    --duration 20 >"results/demo_client_${models[$i]}.txt" 2>&1 &
  pids+=($!)
done
sleep 18
echo "-- the server's view near the end: per tenant share of device time and energy"
build/etf stats --server "$addr" || true
for p in "${pids[@]}"; do wait "$p"; done
for m in "${models[@]}"; do
  echo "-- client ${m}:"
  tail -n 6 "results/demo_client_${m}.txt"
done
kill -INT "$server"
wait "$server" || true
echo "-- server summary"
sed -n '/listening on/!p' "$log"
