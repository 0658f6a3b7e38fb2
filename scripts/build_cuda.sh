#!/usr/bin/env bash
# Builds evop's `cuda` feature on a machine without a GPU or system CUDA toolkit, for running on
# an NVIDIA Hopper GPU (compute capability 9.0, CUDA 13.0 driver).
#
# - The CUDA 13.0 toolkit comes from PyPI wheels into $EVOP_CUDA_DIR (default .cache/cuda13).
# - The driver library is a link-time stub (soname libcuda.so.1): the real driver is loaded at run
#   time on the GPU machine.
# - Output: target-cuda/release/evop and target-cuda/release/examples/* ; the first build takes
#   35-45 minutes on 2 cores (candle's GGUF kernels dominate), later ones are incremental.
#
# Usage: scripts/build_cuda.sh [extra cargo args, e.g. --example forward_throughput]
#        scripts/build_cuda.sh test [cargo test args, e.g. -p evop-model --lib --test hf_fixtures]
#          (test binaries, built with --no-run, for running with EVOP_TEST_DEVICE=cuda)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_DIR="${EVOP_CUDA_DIR:-$PWD/.cache/cuda13}"
C="$CUDA_DIR/nvidia/cu13"
if [ ! -x "$C/bin/nvcc" ]; then
  python3 -m pip install --no-deps --target "$CUDA_DIR" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35
fi
for lib in cublas cublasLt curand nvrtc cudart; do
  if [ ! -e "$C/lib/lib$lib.so" ]; then
    target=$(ls "$C/lib/lib$lib.so."* | sort | head -n1)
    ln -sf "$(basename "$target")" "$C/lib/lib$lib.so"
  fi
done
if [ ! -e "$C/lib/libcuda.so" ]; then
  # Fetch cudarc's sources (cargo fetch) and stub every driver entry point it declares.
  cargo fetch --quiet
  sys=$(ls -d "$HOME"/.cargo/registry/src/*/cudarc-*/src/driver/sys | sort | tail -n1)
  grep -rhoE '\bcu[A-Z][A-Za-z0-9_]*\b' "$sys" | sort -u \
    | awk '{print "int " $1 "(void){return 999;}"}' > "$CUDA_DIR/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$C/lib/libcuda.so" "$CUDA_DIR/stub.c"
fi
export CUDA_HOME="$C" PATH="$C/bin:$PATH" CUDA_COMPUTE_CAP=90 LIBRARY_PATH="$C/lib" \
  LD_LIBRARY_PATH="$C/lib:${LD_LIBRARY_PATH:-}" CARGO_TARGET_DIR="$PWD/target-cuda"
if [ "${1:-}" = test ]; then
  shift
  cargo test --no-run --release --features cuda "$@"
else
  cargo build --release --features cuda -p evop-cli -p evop "$@"
fi
