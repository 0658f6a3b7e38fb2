#!/usr/bin/env bash
# Candidate evaluations per second on one GPU (docs/gpu.md, "Search throughput against the PyTorch
# loop"): evop's examples/search_rate (built here by `scripts/build_cuda.sh --example search_rate`,
# packed as .cache/gpubin/search_rate.xz) against scripts/torch_search_loop.py, on the same model
# shape, calibration shape, masks and GPU: SLEB's greedy steps and an EvoP GA run (whose evaluated
# masks the PyTorch loop then scores). For SLEB, evop's naive path (a full forward per candidate,
# nothing reused) is timed too: evop's kernels against PyTorch's, without reuse.
#
#   scripts/gpu_search_rate.sh [MODEL] [WINDOWSxSEQLEN...]   # default synthetic:llama2-7b 8x512 32x128
#
# MODEL is a synthetic shape (`synthetic:llama2-7b`) or a GGUF file; for a GGUF file set
# TORCH_SYNTHETIC to the PyTorch loop's random-weight model of the same shape (its time does not
# depend on the weights), e.g. TORCH_SYNTHETIC=qwen2.5-coder-1.5b. EXTRA passes more arguments to
# search_rate (e.g. EXTRA="--cache-mib 1024"); GENERATIONS sets the EvoP run's length (default 6).
# The PyTorch loop runs 8 windows per forward and, where a shape has more windows, all of them in
# one forward too (its best at these sizes), so each ratio can be read against the faster loop.
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
  *) torch_model=(--synthetic "${TORCH_SYNTHETIC:?set TORCH_SYNTHETIC for a GGUF model}") ;;
esac
nvidia-smi -L
for shape in "${shapes[@]}"; do
  w="${shape%x*}"; s="${shape#*x}"
  common=(--model "$model" --device cuda --dtype bf16 --windows "$w" --seqlen "$s" --n 6 --generations "${GENERATIONS:-6}")
  rm -rf "$OUT/m$shape"
  "$bin" "${common[@]}" --methods sleb,evop --masks-out "$OUT/m$shape" --json "$OUT/evop-rate.jsonl" ${EXTRA:-}
  "$bin" "${common[@]}" --methods sleb --paths naive --json "$OUT/evop-rate.jsonl"
  batches=(8)
  [ "$w" -gt 8 ] && batches+=("$w")
  for b in "${batches[@]}"; do
    echo "pytorch loop $shape, $b windows per forward: SLEB stream, then the EvoP run's masks"
    PYTHONUNBUFFERED=1 python3 scripts/torch_search_loop.py "${torch_model[@]}" --windows "$w" --seqlen "$s" --batch "$b" \
      --stream sleb:6 --loss nll --json "$OUT/torch-sleb-$shape-b$b.json" | grep '"evaluations_per_s'
    PYTHONUNBUFFERED=1 python3 scripts/torch_search_loop.py "${torch_model[@]}" --windows "$w" --seqlen "$s" --batch "$b" \
      --masks "$OUT/m$shape/evop-checkpoint.json" --loss nll --json "$OUT/torch-evop-$shape-b$b.json" | grep '"evaluations_per_s'
  done
done
