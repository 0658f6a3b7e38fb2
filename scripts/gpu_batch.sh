#!/usr/bin/env bash
# The GPU measurements of docs/gpu.md and docs/results.md, run on a machine with NVIDIA H200s
# (4 GPUs for every phase but `tests`), from binaries built here by scripts/build_cuda.sh and
# packed as gzip or xz files into .cache/gpubin/. Results go to $OUT (default out/gpu).
#
#   scripts/gpu_batch.sh 7b      # Llama-2-7B-shaped throughput (evop vs PyTorch), placement, replicas
#   scripts/gpu_batch.sh mpi     # the MPI evaluator with 1, 2 and 4 ranks
#   scripts/gpu_batch.sh tests   # device-parametrised test binaries on cuda (needs the SmolLM2 GGUF)
#   scripts/gpu_batch.sh study   # the calibration/objective study, 4 processes per GPU
#   scripts/gpu_batch.sh paper   # EvoP, then SLEB, at 128 x 2048 calibration tokens (one GPU)
#   scripts/gpu_batch.sh screen  # the chosen EvoP defaults with and without --screen-tokens 32 (one GPU)
#   scripts/gpu_batch.sh immigrants  # the GA with no random immigrants against the default 10 % (one GPU)
#   scripts/gpu_batch.sh attn    # one or two GPUs: the fused-softmax attention (profile, 7B throughput
#                                # against PyTorch), pipeline placement, f32 with and without TF32
#
# The SmolLM2 GGUF travels in parts (.cache/xfer3/gguf.part*) and is joined into the asset cache
# layout under .cache/devcache (EVOP_CACHE_DIR), with the stamps copied from ~/.cache/evop.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
BIN=/tmp/evop-bin
mkdir -p "$BIN"
# Binaries travel gzip- or xz-compressed (xz: about a third smaller); Python's lzma unpacks xz
# where no xz tool is installed.
for z in .cache/gpubin/*.gz .cache/gpubin/*.xz; do
  [ -e "$z" ] || continue
  b="$BIN/$(basename "${z%.*}")"
  [ -x "$b" ] && continue
  case "$z" in
    *.gz) gunzip -c "$z" > "$b" ;;
    *.xz) python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "$b" ;;
  esac
  chmod +x "$b"
done
export EVOP_CACHE_DIR="$PWD/.cache/devcache" NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
gguf="$EVOP_CACHE_DIR/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$gguf" ] && [ -e .cache/xfer3/gguf.partac ]; then
  cat .cache/xfer3/gguf.part* > "$gguf"
fi
log="$OUT/log.txt"
say() { echo "== $*" | tee -a "$log"; }

case "${1:-}" in
7b)
  nvidia-smi -L | tee -a "$log"
  say "PyTorch eager, Llama-2-7B shape, bf16, cuda:0"
  CUDA_VISIBLE_DEVICES=0 python3 scripts/torch_pruned_throughput.py --json "$OUT/torch_7b.json" 2>&1 | grep -v Warning | tee -a "$log"
  say "evop, same shapes, cuda:0"
  "$BIN/pruned_throughput" --devices cuda:0 --json "$OUT/evop_7b.json" 2>&1 | tee -a "$log"
  say "evop, blocks split over cuda:0 and cuda:1 (pipeline placement), checked against cuda:2"
  "$BIN/pruned_throughput" --devices cuda:0,cuda:1 --check-against cuda:2 --reps 3 --json "$OUT/evop_7b_placed.json" 2>&1 | tee -a "$log"
  say "evop, one replica per GPU"
  "$BIN/multi_device" --devices cuda:0,cuda:1,cuda:2,cuda:3 --json "$OUT/multi_device.json" 2>&1 | tee -a "$log"
  for dt in f32 bf16; do
    say "SmolLM2-shaped model in $dt (the f32 LM head check)"
    "$BIN/pruned_throughput" --model synthetic:smollm2-135m --devices cuda:0 --dtype "$dt" --prompt-batch 8 --prompt-len 128 \
      --gen-batch 8 --new-tokens 32 --reps 3 --json "$OUT/smollm2_$dt.json" 2>&1 | tee -a "$log"
  done
  ;;
attn)
  nvidia-smi -L | tee -a "$log"
  gpus=$(nvidia-smi -L | wc -l)
  m7=(--model synthetic:llama2-7b --device cuda --dtype bf16 --reps 5)
  for shape in 2048x1 128x64 1x64; do
    say "profile of one Llama-2-7B-shaped block at $shape (bf16)"
    "$BIN/forward_throughput" "${m7[@]}" --profile "$shape" 2>&1 | tee -a "$log"
  done
  say "PyTorch eager, Llama-2-7B shape, bf16, cuda:0"
  CUDA_VISIBLE_DEVICES=0 python3 scripts/torch_pruned_throughput.py --json "$OUT/torch_7b.json" 2>&1 | grep -v Warning | tee -a "$log"
  say "evop, same shapes, cuda:0"
  "$BIN/pruned_throughput" --devices cuda:0 --json "$OUT/evop_7b.json" 2>&1 | tee -a "$log"
  # Placement across two GPUs; on a one-GPU machine, across two device handles of the same GPU
  # (separate candle devices: every stage boundary takes the cross-device path).
  if [ "$gpus" -ge 2 ]; then pair=cuda:0,cuda:1; else pair=cuda:0,cuda:0; fi
  say "evop, blocks split over $pair (pipeline placement), checked against cuda:0 alone"
  "$BIN/pruned_throughput" --devices "$pair" --check-against cuda:0 --reps 3 --json "$OUT/evop_7b_placed.json" 2>&1 | tee -a "$log"
  for tf in "" --tf32; do
    say "SmolLM2 shape, f32 ${tf:-(full-precision GEMMs)}"
    "$BIN/forward_throughput" --model synthetic:smollm2-135m --device cuda --dtype f32 --reps 5 --shapes 128x8,512x8,2048x1 $tf 2>&1 | tee -a "$log"
    "$BIN/forward_throughput" --model synthetic:smollm2-135m --device cuda --dtype f32 --reps 5 --profile 512x8 $tf 2>&1 | tee -a "$log"
  done
  say "SmolLM2 shape, bf16"
  "$BIN/forward_throughput" --model synthetic:smollm2-135m --device cuda --dtype bf16 --reps 5 --shapes 128x8,512x8,2048x1,2048x8 2>&1 | tee -a "$log"
  if [ -x "$BIN/device_check" ] && [ -s "$gguf" ]; then
    say "device_check: SmolLM2 on cuda against the CPU"
    "$BIN/device_check" --device cuda 2>&1 | tee -a "$log"
  fi
  ;;
screen)
  # Screening (`--screen-tokens 32`) against the unscreened default search, same lease, 3 seeds,
  # n = 6 and 9, CCDS 4 x 128, KL objective, GA 32 x 30, zero-shot columns.
  mkdir -p "$OUT/screen"
  common=(--device cuda --dtype bf16 --eval-windows 0 --topic-windows 16 --calib-cache .cache/calib --exhaustive-ns 0
          --calib-windows 4 --seqlen 128 --pool 512 --ns 6,9 --methods evop-ccds:kl --population 32 --generations 30
          --stalled 8 --tasks science,winogrande,step_inference --task-limit 200)
  threads=$(( $(nproc) / 6 ))
  for s in 0 1 2; do
    RAYON_NUM_THREADS=$threads timeout 500 "$BIN/study" "${common[@]}" --seeds $s --tag /32x30+screen32 --screen-tokens 32 \
      --out "$OUT/screen/screen-s$s" > "$OUT/screen/screen-s$s.log" 2>&1 &
    RAYON_NUM_THREADS=$threads timeout 500 "$BIN/study" "${common[@]}" --seeds $s --tag /32x30-rerun \
      --out "$OUT/screen/full-s$s" > "$OUT/screen/full-s$s.log" 2>&1 &
  done
  wait
  cat "$OUT"/screen/*.rows.jsonl > "$OUT/screen_rows.jsonl"
  tail -n 4 "$OUT"/screen/*.log > "$OUT/screen_logs.txt"
  rm -rf "$OUT/screen"
  ;;
immigrants)
  # The GA's random immigrants: none against the default 10 %, same lease and binary, 3 seeds,
  # n = 6 and 9, CCDS 4 x 128, KL objective, GA 32 x 30, stop after 8 stalled.
  mkdir -p "$OUT/imm"
  common=(--device cuda --dtype bf16 --eval-windows 0 --topic-windows 16 --calib-cache .cache/calib --exhaustive-ns 0
          --calib-windows 4 --seqlen 128 --pool 512 --ns 6,9 --methods evop-ccds:kl --population 32 --generations 30
          --stalled 8)
  threads=$(( $(nproc) / 6 ))
  for s in 0 1 2; do
    RAYON_NUM_THREADS=$threads timeout 500 "$BIN/study" "${common[@]}" --seeds $s --tag /imm0 --immigrants 0 \
      --out "$OUT/imm/imm0-s$s" > "$OUT/imm/imm0-s$s.log" 2>&1 &
    RAYON_NUM_THREADS=$threads timeout 500 "$BIN/study" "${common[@]}" --seeds $s --tag /imm10 --immigrants 0.1 \
      --out "$OUT/imm/imm10-s$s" > "$OUT/imm/imm10-s$s.log" 2>&1 &
  done
  wait
  cat "$OUT"/imm/*.rows.jsonl > "$OUT/immigrants_rows.jsonl"
  tail -n 4 "$OUT"/imm/*.log > "$OUT/immigrants_logs.txt"
  rm -rf "$OUT/imm"
  ;;
paper)
  # The paper's calibration budget, 128 windows x 2048 tokens (CCDS over 256 candidate windows,
  # built here into .cache/calib), n = 6, GA 16 x 10: EvoP first, SLEB in what time is left.
  mkdir -p "$OUT/paper"
  paper=(--device cuda --dtype bf16 --eval-windows 0 --topic-windows 16 --calib-cache .cache/calib --exhaustive-ns 0
         --calib-windows 128 --seqlen 2048 --pool 256 --ns 6 --seeds 0 --population 16 --generations 10 --stalled 5)
  timeout "${EVOP_LIMIT_S:-330}" "$BIN/study" "${paper[@]}" --methods evop-ccds:kl --out "$OUT/paper/evop" 2>&1 | tail -n 30 | tee -a "$log"
  timeout "${SLEB_LIMIT_S:-200}" "$BIN/study" "${paper[@]}" --methods sleb --out "$OUT/paper/sleb" 2>&1 | tail -n 30 | tee -a "$log"
  cat "$OUT"/paper/*.rows.jsonl > "$OUT/paper_rows.jsonl" 2>/dev/null
  ;;
mpi)
  # Candidate evaluations per second through the MPI work queue with 1, 2 and 4 ranks (one GPU
  # each), with Open MPI's runtime packed by scripts/mpi_pack.sh.
  # shellcheck disable=SC1091
  source .cache/mpirt/env.sh
  for n in 1 2 4; do
    say "mpi_scaling, $n ranks"
    mpirun --allow-run-as-root --oversubscribe -np "$n" --mca btl self,vader,tcp --mca btl_vader_single_copy_mechanism none \
      -x EVOP_CACHE_DIR -x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH \
      "$BIN/mpi_scaling" --json "$OUT/mpi_$n.json" 2>&1 | tail -n 40 | tee -a "$log"
  done
  ;;
tests)
  # Test binaries find their fixtures under the path they were built in.
  [ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
  for t in "$BIN"/test-*; do
    say "$(basename "$t") on cuda"
    EVOP_TEST_DEVICE=cuda "$t" --test-threads 1 2>&1 | tail -n 25 | tee -a "$log"
  done
  ;;
study)
  # One process per (budget, seed), four per GPU; rows stream to $OUT/*.rows.jsonl, so a
  # process stopped by the time limit keeps what it finished.
  limit="${STUDY_LIMIT_S:-500}"
  common=(--device cuda --dtype bf16 --eval-windows 0 --topic-windows 16 --calib-cache .cache/calib
          --exhaustive-ns 3)
  ga="--population 32 --generations 30 --stalled 8"
  all="sleb,evop-ccds,evop-ccds:balanced,sleb-ccds,evop-random,evop1l-ccds,greedy-ccds:balanced,evop-ccds:kl,evop-ccds:cvar:0.25"
  mid="sleb,evop-ccds,evop-ccds:balanced,sleb-ccds,evop-random,evop1l-ccds,greedy-ccds:balanced,evop-ccds:kl"
  big="sleb,evop-ccds,sleb-ccds,evop-ccds:balanced"
  jobs=()
  for s in 0 1 2; do
    jobs+=("b512-s$s|--calib-windows 4 --seqlen 128 --pool 512 --ns 3,6,9 --methods $all --seeds $s $ga")
    jobs+=("b2k-s$s|--calib-windows 16 --seqlen 128 --pool 512 --ns 6,9 --methods $all --seeds $s $ga")
    jobs+=("b8k-s$s|--calib-windows 64 --seqlen 128 --pool 512 --ns 6,9 --methods $mid --seeds $s $ga")
    jobs+=("b32k-s$s|--calib-windows 256 --seqlen 128 --pool 2048 --ns 6,9 --methods $big --seeds $s $ga")
  done
  jobs+=("hidden-b8k|--calib-windows 64 --seqlen 128 --pool 512 --ns 6,9 --methods evop-ccds,sleb-ccds --embedder hidden:12 --seeds 0,1,2 $ga")
  jobs+=("paper-64x2048|--calib-windows 64 --seqlen 2048 --pool 256 --ns 6 --methods evop-ccds,sleb --seeds 0 --population 16 --generations 10 --stalled 5")
  mkdir -p "$OUT/study"
  i=0
  for j in "${jobs[@]}"; do
    name="${j%%|*}"; args="${j#*|}"
    gpu=$((i % 4)); i=$((i + 1))
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu RAYON_NUM_THREADS=4 timeout "$limit" "$BIN/study" "${common[@]}" $args \
      --out "$OUT/study/$name" > "$OUT/study/$name.log" 2>&1 &
  done
  wait
  cat "$OUT"/study/*.rows.jsonl > "$OUT/study_rows.jsonl" 2>/dev/null
  tail -n 3 "$OUT"/study/*.log > "$OUT/study_logs.txt"
  tar czf "$OUT/study.tgz" -C "$OUT" study && rm -rf "$OUT/study"
  ;;
more1|more2|more3|more4)
  # The study's second pass, sized for one GPU (every job shares it; each process gets an equal
  # share of the CPU cores): more1 = the CLI's defaults (GA 16 x 12, seeded with ShortGPT's
  # answer, KL objective, CCDS 4 x 128) against SLEB with zero-shot columns, the CCDS cluster
  # count k, the model's own hidden states as embedder, and the 2k-token cells left unfinished;
  # more2 = the 8k and 32k cells left unfinished; more3 = EvoP's defaults at larger GA budgets (and
  # seeded with SLEB's answer) and what more2 left; more4 = the chosen defaults (GA 32 x 30, not
  # seeded) with zero-shot columns. Rows go to $OUT/more/*.rows.jsonl.
  limit="${STUDY_LIMIT_S:-540}"
  common=(--device cuda --dtype bf16 --eval-windows 0 --topic-windows 16 --calib-cache .cache/calib --exhaustive-ns 0)
  b512=(--calib-windows 4 --seqlen 128 --pool 512)
  ga="--population 32 --generations 30 --stalled 8"
  default_ga="--population 16 --generations 12 --stalled 5"
  zs="--tasks science,winogrande,step_inference --task-limit 200"
  jobs=()
  if [ "$1" = more1 ]; then
    for s in 0 1 2; do
      jobs+=("default-s$s|${b512[*]} --ns 6,9 --methods sleb,evop-ccds:kl,evop-ccds --seed-with shortgpt --seeds $s $default_ga $zs")
    done
    for k in 2 4 8 16; do
      jobs+=("k$k|${b512[*]} --ns 6,9 --methods evop-ccds:kl,sleb-ccds --clusters $k --tag /k=$k --seeds 0,1,2 $default_ga")
    done
    jobs+=("hidden-b512|${b512[*]} --ns 6,9 --methods evop-ccds:kl,sleb-ccds --embedder hidden:12 --tag /hidden:12 --seeds 0,1,2 $default_ga")
    b2k9=(evop-ccds:kl,evop-ccds:cvar:0.25,evop1l-ccds,greedy-ccds:balanced evop-ccds:kl,evop-ccds:cvar:0.25
          evop-ccds:kl,evop-ccds:cvar:0.25,evop1l-ccds,greedy-ccds:balanced,evop-random)
    for s in 0 1 2; do
      jobs+=("b2k9-s$s|--calib-windows 16 --seqlen 128 --pool 512 --ns 9 --methods ${b2k9[$s]} --seeds $s $ga")
    done
  elif [ "$1" = more4 ]; then
    for s in 0 1 2; do
      jobs+=("ga32u-s$s|${b512[*]} --ns 6,9 --methods evop-ccds:kl --tag /32x30 --seeds $s $ga $zs")
    done
  elif [ "$1" = more3 ]; then
    for s in 0 1 2; do
      jobs+=("ga32-s$s|${b512[*]} --ns 6,9 --methods evop-ccds:kl --seed-with shortgpt --tag /32x30 --seeds $s $ga $zs")
      jobs+=("ga24-s$s|${b512[*]} --ns 6,9 --methods evop-ccds:kl --seed-with shortgpt --tag /24x20 --seeds $s --population 24 --generations 20 --stalled 6 $zs")
      jobs+=("slebseed-s$s|${b512[*]} --ns 6,9 --methods evop-ccds:kl --seed-with shortgpt,sleb --tag /16x12+sleb --seeds $s $default_ga $zs")
      jobs+=("b8k9r-s$s|--calib-windows 64 --seqlen 128 --pool 512 --ns 9 --methods evop-random --seeds $s $ga")
      jobs+=("b32k9c-s$s|--calib-windows 256 --seqlen 128 --pool 2048 --ns 9 --methods sleb-ccds --seeds $s $ga")
    done
    for s in 1 2; do
      jobs+=("b8k9kl-s$s|--calib-windows 64 --seqlen 128 --pool 512 --ns 9 --methods evop-ccds:kl --seeds $s $ga")
    done
  else
    for s in 0 1 2; do
      jobs+=("b8k-kl-s$s|--calib-windows 64 --seqlen 128 --pool 512 --ns 6,9 --methods evop-ccds:kl --seeds $s $ga")
      jobs+=("b8k9-s$s|--calib-windows 64 --seqlen 128 --pool 512 --ns 9 --methods evop-ccds:balanced,evop-random --seeds $s $ga")
      jobs+=("b32k-s$s|--calib-windows 256 --seqlen 128 --pool 2048 --ns 9 --methods sleb,sleb-ccds --seeds $s $ga")
    done
  fi
  mkdir -p "$OUT/more"
  gpus=$(nvidia-smi -L | wc -l)
  threads=$(( $(nproc) / ${#jobs[@]} ))
  [ "$threads" -ge 1 ] || threads=1
  i=0
  for j in "${jobs[@]}"; do
    name="${j%%|*}"; args="${j#*|}"
    gpu=$((i % gpus)); i=$((i + 1))
    # shellcheck disable=SC2086
    CUDA_VISIBLE_DEVICES=$gpu RAYON_NUM_THREADS=$threads timeout "$limit" "$BIN/study" "${common[@]}" $args \
      --out "$OUT/more/$name" > "$OUT/more/$name.log" 2>&1 &
  done
  wait
  cat "$OUT"/more/*.rows.jsonl > "$OUT/$1_rows.jsonl" 2>/dev/null
  tail -n 4 "$OUT"/more/*.log > "$OUT/$1_logs.txt"
  tar czf "$OUT/$1.tgz" -C "$OUT" more && rm -rf "$OUT/more"
  ;;
*)
  echo "usage: $0 7b|attn|mpi|tests|study|more1|more2|more3|more4" >&2
  exit 2
  ;;
esac
