#!/usr/bin/env bash
# The equal-compute study (docs/results.md, "EvoP at equal compute") on a GPU machine that has no
# network: examples/equal_compute.rs built here by `scripts/build_cuda.sh --example equal_compute`,
# packed as .cache/gpubin/equal_compute.xz; the asset cache (GGUF files, Wikipedia leads, stamps)
# split into parts of at most 54 MiB (with the working tree, under the 64 MiB a call carries) under .cache/xfer/ by `scripts/gpu_equal_compute.sh pack`
# (each part travels in its own call); CCDS calibration sets prepared here under out/calib
# (`equal_compute --prepare-only`) and packed with the small part; all-MiniLM-L6-v2 (the decision
# windows' CCDS draw runs there) in parts minilm.partNN; the healer's texts (code-python-calib and
# the sealed out-of-domain texts of scripts/fresh_ood_texts.sh under fresh/) in the small part.
#
#   scripts/gpu_equal_compute.sh pack MODEL...       # here: split the assets of MODELs into .cache/xfer/
#   scripts/gpu_equal_compute.sh run MODEL [ARGS]    # there: join, verify, run; rows to $OUT
#   scripts/gpu_equal_compute.sh heal MODEL [ARGS]   # there: the same, examples/heal_study
set -uo pipefail
cd "$(dirname "$0")/.."
cache="${EVOP_CACHE_DIR:-$HOME/.cache/evop}"
dir_of() {
  case "$1" in
    smollm2-135m) echo smollm2-135m-instruct ;;
    qwen2.5-coder-0.5b) echo qwen2.5-coder-0.5b-instruct ;;
    qwen2.5-coder-1.5b) echo qwen2.5-coder-1.5b-instruct ;;
    *) echo "unknown model $1" >&2; exit 2 ;;
  esac
}
case "${1:-}" in
pack)
  shift
  mkdir -p .cache/xfer
  # Small things: stamps, the Wikipedia leads, calibration sets.
  tar -C "$cache" -cf .cache/xfer/small.tar wikipedia-leads $(for m in "$@"; do echo "$(dir_of "$m")/.evop-stamp"; done)
  tar -C "$cache" -rf .cache/xfer/small.tar texts fresh
  tar -rf .cache/xfer/small.tar out/calib
  tar -C "$cache" -cf .cache/xfer/minilm.tar all-minilm-l6-v2
  split -b 54M -d -a 2 .cache/xfer/minilm.tar .cache/xfer/minilm.part && rm .cache/xfer/minilm.tar
  for m in "$@"; do
    d=$(dir_of "$m")
    split -b 54M -d -a 2 "$cache/$d/"*.gguf ".cache/xfer/$d.part"
  done
  ls -la .cache/xfer
  ;;
run|heal)
  what="$1"; shift
  model="$1"; shift
  d=$(dir_of "$model")
  export EVOP_CACHE_DIR="$PWD/.cache/devcache"
  mkdir -p "$EVOP_CACHE_DIR"
  tar -C "$EVOP_CACHE_DIR" -xf .cache/xfer/small.tar --exclude 'out/*'
  tar -xf .cache/xfer/small.tar out/calib
  if [ ! -d "$EVOP_CACHE_DIR/all-minilm-l6-v2" ] && [ -e .cache/xfer/minilm.part00 ]; then
    cat .cache/xfer/minilm.part* | tar -C "$EVOP_CACHE_DIR" -xf -
  fi
  name=$(awk '/^file /{print $4}' "$EVOP_CACHE_DIR/$d/.evop-stamp")
  want=$(awk '/^file /{print $3}' "$EVOP_CACHE_DIR/$d/.evop-stamp")
  if [ ! -s "$EVOP_CACHE_DIR/$d/$name" ]; then
    cat .cache/xfer/"$d".part* > "$EVOP_CACHE_DIR/$d/$name"
  fi
  got=$(sha256sum "$EVOP_CACHE_DIR/$d/$name" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "$d/$name: sha256 $got, expected $want" >&2; exit 1; }
  # run: examples/equal_compute; heal: examples/heal_study (texts under $EVOP_CACHE_DIR/texts, fresh/).
  example=equal_compute
  [ "$what" = heal ] && example=heal_study
  bin=/tmp/$example
  [ -x "$bin" ] || { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' .cache/gpubin/$example.xz "$bin"; chmod +x "$bin"; }
  nvidia-smi -L
  if [ "$what" = heal ]; then
    "$bin" --model "$model" "$@"
  else
    "$bin" --model "$model" --calib-cache out/calib "$@"
  fi
  ;;
*)
  echo "usage: $0 pack MODEL... | run MODEL [ARGS] | heal MODEL [ARGS]" >&2
  exit 2
  ;;
esac
