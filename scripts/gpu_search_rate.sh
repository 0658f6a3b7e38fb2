#!/usr/bin/env bash
# Candidate evaluations per second on one GPU (docs/gpu.md, "Search throughput against the PyTorch
# loop"): evop's examples/search_rate (built here by `scripts/build_cuda.sh --example search_rate`,
# packed as .cache/gpubin/search_rate.xz) against scripts/torch_search_loop.py, on the same model
# shape, calibration shape, masks and GPU: SLEB's greedy steps and an EvoP GA run (whose evaluated
# masks the PyTorch loop then scores).
#
#   scripts/gpu_search_rate.sh [MODEL] [WINDOWSxSEQLEN...]   # default synthetic:llama2-7b 8x512 32x128
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/rate}"
mkdir -p "$OUT"
model="${1:-synthetic:llama2-7b}"
shift || true
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(8x512 32x128)
bin=/tmp/search_rate
[ -x "$bin" ] || { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .cache/gpubin/search_rate.xz "$bin"; chmod +x "$bin"; }
case "$model" in
  synthetic:*) torch_model=(--synthetic "${model#synthetic:}") ;;
  *) torch_model=(--model "$model") ;;
esac
nvidia-smi -L
for shape in "${shapes[@]}"; do
  w="${shape%x*}"; s="${shape#*x}"
  "$bin" --model "$model" --device cuda --dtype bf16 --windows "$w" --seqlen "$s" --n 6 --methods sleb,evop \
    --paths reuse --generations 6 --masks-out "$OUT/m$shape" --json "$OUT/evop-rate.jsonl"
  PYTHONUNBUFFERED=1 python3 scripts/torch_search_loop.py "${torch_model[@]}" --windows "$w" --seqlen "$s" --batch 8 \
    --stream sleb:6 --loss nll --json "$OUT/torch-sleb-$shape.json" | tail -3
  PYTHONUNBUFFERED=1 python3 scripts/torch_search_loop.py "${torch_model[@]}" --windows "$w" --seqlen "$s" --batch 8 \
    --masks "$OUT/m$shape/evop-checkpoint.json" --loss nll --json "$OUT/torch-evop-$shape.json" | tail -3
done
