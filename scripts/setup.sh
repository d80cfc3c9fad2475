#!/usr/bin/env bash
# Installs what ETF needs to build and test on Debian 12, from Debian's packages only.
# Packages already present are not asked for again, so a second run needs no network.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config  # the build
  libcjson-dev                                   # profiles, scenarios, reports
  libcmocka-dev                                  # unit tests
  libprotobuf-c-dev protobuf-c-compiler libonnx-dev  # ONNX models
  libdnnl-dev                                    # the CPU device (oneDNN)
  libgrpc-dev python3-grpcio python3-grpc-tools  # the server, its client, and an independent Python peer
  clang libclang-rt-14-dev                       # fuzz targets (libFuzzer) and sanitizers
)

# --models adds what exporting the real models needs (PyTorch from Debian, ~1.4 GB) and the
# npm client for the ONNX Runtime peer of the benchmarks.
if [ "${1:-}" = "--models" ]; then
  packages=(python3-torch python3-torchvision python3-onnx python3-numpy)
  command -v npm >/dev/null || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

sudo=()
[ "$(id -u)" -eq 0 ] || sudo=(sudo)
echo "setup: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
