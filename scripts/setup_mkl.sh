# shellcheck shell=bash
# Installs Intel oneMKL (static libraries) and the Intel OpenMP runtime from PyPI wheels into
# $EVOP_MKL_DIR (default .cache/mkl) and exports what evop's `mkl` feature needs to build:
#
#   source scripts/setup_mkl.sh
#   cargo build --release --features mkl --example forward_throughput   # -> target-mkl/release/...
#
# How it is found: candle-core's `mkl` feature depends on intel-mkl-src 0.8.1 with the
# `mkl-static-lp64-iomp` configuration. Its build script (intel-mkl-tool) asks pkg-config, then
# walks $MKLROOT, then /opt/intel, for mkl.h, libmkl_intel_lp64.a, libmkl_intel_thread.a,
# libmkl_core.a and libiomp5.{a,so}; only if all of those fail does it try to download a package
# from ghcr.io. We give it $MKLROOT with exactly those files.
#
# Only the static OpenMP runtime (libiomp5.a) is installed, not libiomp5.so: `-liomp5` then
# resolves to the archive, and the binaries need no LD_LIBRARY_PATH and no MKL at run time.
#
# Exports: MKLROOT, CARGO_TARGET_DIR (target-mkl, so the default target/ is not rebuilt).
# Needs python3 with pip, and PyPI (about 300 MB of wheels, about 1 GB unpacked, once).
# The script is meant to be sourced; run with `bash scripts/setup_mkl.sh` it only installs and
# prints the variables.

_evop_mkl_setup() {
  local root ver dir wheels
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  ver="${EVOP_MKL_VERSION:-2026.2.0}"
  dir="${EVOP_MKL_DIR:-$root/.cache/mkl}"
  if [ ! -f "$dir/.installed-$ver" ]; then
    wheels="$dir/wheels"
    mkdir -p "$wheels" || return 1
    echo "setup_mkl: downloading mkl-static, mkl-include, intel-openmp $ver from PyPI" >&2
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$wheels" \
      "mkl-static==$ver" "mkl-include==$ver" "intel-openmp==$ver" || return 1
    rm -rf "$dir/lib" "$dir/include"
    mkdir -p "$dir/lib" "$dir/include" || return 1
    # Wheels keep their payload under <name>-<ver>.data/data/{lib,include}/.
    python3 - "$wheels" "$dir" "$ver" <<'EOF' || return 1
import pathlib, shutil, sys, zipfile
wheels, dest, ver = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
want_lib = {"libmkl_intel_lp64.a", "libmkl_intel_thread.a", "libmkl_core.a", "libiomp5.a"}
for name in ("mkl_static", "mkl_include", "intel_openmp"):
    (whl,) = wheels.glob(f"{name}-{ver}-*.whl")
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) < 4 or parts[1] != "data":
                continue
            kind, rest = parts[2], parts[3:]
            if kind == "lib" and len(rest) == 1 and rest[0] in want_lib:
                out = dest / "lib" / rest[0]
            elif kind == "include":
                out = dest / "include" / "/".join(rest)
            else:
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
missing = [f for f in want_lib if not (dest / "lib" / f).is_file()]
missing += [] if (dest / "include" / "mkl.h").is_file() else ["mkl.h"]
if missing:
    sys.exit(f"setup_mkl: missing after unpacking: {missing}")
EOF
    rm -rf "$wheels"
    touch "$dir/.installed-$ver"
  fi
  export MKLROOT="$dir"
  export CARGO_TARGET_DIR="${EVOP_MKL_TARGET_DIR:-$root/target-mkl}"
  echo "setup_mkl: MKL $ver in $MKLROOT" >&2
  echo "export MKLROOT=$MKLROOT CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
}

_evop_mkl_setup
_evop_mkl_status=$?
unset -f _evop_mkl_setup
# shellcheck disable=SC2317  # `return` when sourced, `exit` when run
return "$_evop_mkl_status" 2>/dev/null || exit "$_evop_mkl_status"
