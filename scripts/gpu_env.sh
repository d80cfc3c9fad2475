#!/usr/bin/env bash
# Sourced by the GPU scripts: puts the libraries that prebuilt binaries need and the GPU
# machine lacks on the loader path (BUILD_DIR/libs, $ETF_GPU_LIBS, and cuDNN/cuBLAS from
# PyTorch's wheels when the system has no cuDNN 9).
#   . scripts/gpu_env.sh BUILD_DIR
extra=()
[ -n "${ETF_GPU_LIBS:-}" ] && extra+=("$ETF_GPU_LIBS")
[ -d "$1/libs" ] && extra+=("$(cd "$1/libs" && pwd)")
if ! ldconfig -p 2>/dev/null | grep -q 'libcudnn\.so\.9 '; then
  # PyTorch's wheels bring cuDNN and cuBLAS under site-packages/nvidia/*/lib.
  for pkg in cudnn cublas cuda_runtime; do
    dir=$(python3 -c "import nvidia.$pkg as m; print(list(m.__path__)[0] + '/lib')" 2>/dev/null) &&
      [ -d "$dir" ] && extra+=("$dir")
  done
fi
if [ ${#extra[@]} -gt 0 ]; then
  joined=$(IFS=:; echo "${extra[*]}")
  export LD_LIBRARY_PATH="$joined${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

