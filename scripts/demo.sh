#!/usr/bin/env bash
# Installs, builds, and runs the demo: the ETF scheduler on the simulated device with
# profiles measured on a Jetson TX2, printing each tenant's share of time and energy.
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
echo "Reports: results/tx2_resnet50_pair.json, results/tx2_demo.json, results/tx2_demo_tasks.csv"
