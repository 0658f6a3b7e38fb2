#!/usr/bin/env bash
# Alternated rounds of evop's CPU forward (examples/forward_throughput) and PyTorch's
# (scripts/torch_forward.py) on the same model directory and threads; one JSON per run in OUTDIR,
# named LABEL-rROUND.json. Tabulate with scripts/cpu_forward_table.py OUTDIR.
#
#   scripts/cpu_forward_rounds.sh MODEL_DIR OUTDIR ROUNDS REPS SHAPES THREADS [LABEL=EVOP_BINARY ...]
#
# MODEL_DIR is a Hugging Face directory both read (the dense model `examples/save_pruned` writes);
# THREADS sets RAYON_NUM_THREADS for evop and torch.set_num_threads for PyTorch; each LABEL=BINARY
# is a forward_throughput build to time (default: evop=target/release/examples/forward_throughput).
# Example (docs/performance.md):
#   scripts/cpu_forward_rounds.sh out/smollm2-dense out/cpu-rounds 3 5 128x1,128x8,512x1,512x8 2
set -euo pipefail
[ $# -ge 6 ] || { sed -n 2,12p "$0"; exit 2; }
model=$1 outdir=$2 rounds=$3 reps=$4 shapes=$5 threads=$6
shift 6
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("evop=target/release/examples/forward_throughput")
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$outdir"
for r in $(seq 1 "$rounds"); do
  echo "round $r $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  for lb in "${bins[@]}"; do
    label=${lb%%=*} bin=${lb#*=}
    RAYON_NUM_THREADS=$threads "$bin" --model "$model" --reps "$reps" --shapes "$shapes" \
      --json "$outdir/$label-r$r.json" >"$outdir/$label-r$r.log" 2>&1
  done
  python3 "$here/torch_forward.py" --model "$model" --reps "$reps" --shapes "$shapes" --threads "$threads" \
    --json "$outdir/torch-r$r.json" >"$outdir/torch-r$r.log" 2>&1
done
