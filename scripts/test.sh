#!/usr/bin/env bash
# Builds ETF and runs the whole test suite: ASan+UBSan (every test), TSan (the threaded
# ones), a short run of every fuzz target, then the plain build (every test; the CUDA
# device is compiled here when nvcc and cuDNN are present, its GPU tests skip without a
# GPU). What CI runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh

fuzz_seconds=${ETF_FUZZ_SECONDS:-15}
jobs=$(nproc)

echo "== ASan+UBSan build"
scripts/build.sh build-asan -DETF_SANITIZE=address -DETF_CUDA=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"

echo "== TSan build (threaded tests)"
scripts/build.sh build-tsan -DETF_SANITIZE=thread -DETF_CUDA=OFF
# gRPC, abseil and oneDNN come uninstrumented from Debian: the suppressions drop only
# reports with one of them on the stack.
TSAN_OPTIONS="halt_on_error=1 suppressions=$root/tests/tsan_grpc.supp" \
  ctest --test-dir build-tsan --output-on-failure -R 'test_sched|test_ledger|test_service|test_profiler|test_copier'

echo "== fuzz targets (${fuzz_seconds}s each)"
CC=clang scripts/build.sh build-fuzz -DETF_FUZZ=ON -DETF_SANITIZE=address -DETF_CUDA=OFF
for target in fuzz_profile fuzz_scenario fuzz_onnx; do
  corpus=$(mktemp -d)
  cp tests/fuzz/seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  build-fuzz/tests/"$target" -max_total_time="$fuzz_seconds" -print_final_stats=0 "$corpus" \
    2>build-fuzz/"$target".log || { tail -50 build-fuzz/"$target".log; exit 1; }
  rm -rf "$corpus"
  echo "$target: no crash in ${fuzz_seconds}s"
done

echo "== plain build"
scripts/build.sh build
ctest --test-dir build --output-on-failure -j"$jobs"
