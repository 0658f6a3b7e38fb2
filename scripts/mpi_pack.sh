#!/usr/bin/env bash
# Packs Open MPI's runtime (mpirun, orted, libmpi and its libraries, the MCA plugin folders, help
# texts) from Debian 12's .deb files into .cache/mpirt/, relocatable, so a binary built here with
# `--features mpi` runs under mpirun on a machine without Open MPI (glibc >= 2.36, e.g. Ubuntu 24.04).
#
# - Packages: `apt-get download` + `dpkg -x` (no installation); Debian 12 ships Open MPI 4.1.4 with
#   PMIx 4.2.2. Only single-host transports are kept (shared memory `vader`, `self`, `tcp`):
#   plugins for InfiniBand/UCX/libfabric/PSM are dropped with the libraries they need, as are the
#   Fortran, Java, C++ and OpenSHMEM libraries and the compiler wrappers. For a cluster, use the
#   site's Open MPI instead (same libmpi.so.40 ABI) or add ucx to PKGS.
# - The pack is checked: every binary and library in it must resolve against itself plus the C
#   runtime libraries every Linux has (listed in BASE); the script fails otherwise.
# - `.cache/mpirt/env.sh` sets OPAL_PREFIX (Open MPI's relocation), PMIX_PREFIX, PATH and
#   LD_LIBRARY_PATH; source it, then `mpirun --allow-run-as-root -np N ...` works from the copy.
#
# Usage: scripts/mpi_pack.sh [--verify]   (--verify: run a 2-rank hello from the pack with the
#        system's Open MPI hidden in a private mount namespace; needs root and unshare)
# Copy .cache/mpirt/ to the other machine next to the binary (any path; env.sh finds itself).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/.cache/mpirt"
PKGS="openmpi-bin openmpi-common libopenmpi3 libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libmunge2 libnl-3-200"
BASE='^(linux-vdso|ld-linux-x86-64|libc|libm|libdl|libpthread|librt|libgcc_s|libstdc\+\+|libz|libudev)\.so'
ARCH=x86_64-linux-gnu

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q $PKGS 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true)
ls "$work"/*.deb >/dev/null 2>&1 || { echo "apt-get download fetched nothing (run apt-get update?)" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT"
for deb in "$work"/*.deb; do
  dpkg -x "$deb" "$OUT"
  dpkg-deb --showformat='${Package}=${Version}\n' -W "$deb" >> "$OUT/PACKAGES"
done

# Some packages still install into /lib: move them under usr/ with the rest.
if [ -d "$OUT/lib" ]; then cp -a "$OUT/lib/." "$OUT/usr/lib/"; rm -rf "$OUT/lib"; fi
L="$OUT/usr/lib/$ARCH"
# Drop what a single-host C program does not need.
rm -rf "$OUT/usr/share/doc" "$OUT/usr/share/man" "$OUT/usr/share/lintian" "$OUT/usr/lib/$ARCH/pkgconfig"
rm -f "$L"/libmpi_{cxx,java,mpifh,usempi,usempif08,usempi_ignore_tkr}* "$L"/liboshmem* "$L"/libompitrace* \
      "$L"/libmca_common_{ofi,ucx,verbs}* "$L"/openmpi/lib/openmpi3/mca_{btl_ofi,btl_openib,mtl_ofi,mtl_psm,mtl_psm2,pml_ucx,osc_ucx,atomic_ucx,spml_ucx,sshmem_ucx}.so \
      "$L"/openmpi/lib/openmpi3/mca_{atomic,memheap,scoll,spml,sshmem}_*.so "$L"/openmpi/lib/ompi_monitoring_prof.so
find "$OUT/usr/bin" -mindepth 1 \( -name 'mpi*' -o -name 'opal*' -o -name 'orte*' -o -name 'osh*' -o -name 'shmem*' \
  -o -name 'ompi-*' -o -name 'aggregate_profile' -o -name 'profile2mat' -o -name 'oshmem_info' \) \
  ! -name orterun ! -name orted ! -name ompi_info -exec rm -f {} +
ln -sf orterun "$OUT/usr/bin/mpirun"
ln -sf orterun "$OUT/usr/bin/mpiexec"

cat > "$OUT/env.sh" <<'EOF'
# Source this file to use the packed Open MPI runtime (scripts/mpi_pack.sh).
_mpirt=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export OPAL_PREFIX="$_mpirt/usr"
export OPAL_SYSCONFDIR="$_mpirt/etc/openmpi"
export PMIX_PREFIX="$_mpirt/usr/lib/x86_64-linux-gnu/pmix2"
export PMIX_MCA_mca_base_component_path="$_mpirt/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix"
export PATH="$_mpirt/usr/bin:$PATH"
export LD_LIBRARY_PATH="$_mpirt/usr/lib/x86_64-linux-gnu:$_mpirt/usr/lib/x86_64-linux-gnu/openmpi/lib:$_mpirt/usr/lib/x86_64-linux-gnu/pmix2/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Containers often forbid the cross-memory attach that shared-memory transfers use by default.
export OMPI_MCA_btl_vader_single_copy_mechanism=none
unset _mpirt
EOF

# Every ELF file must resolve against the pack plus BASE.
bad=$(
  source "$OUT/env.sh"
  find "$OUT/usr" -type f \( -name '*.so*' -o -path '*/bin/*' \) | while IFS= read -r f; do
    file -b "$f" | grep -q '^ELF' || continue
    ldd "$f" 2>/dev/null | grep '=>' | sed 's/(0x[0-9a-f]*)//' | while read -r lib _ path _; do
      case "$path" in
        "$OUT"/*) ;;
        *) [[ "$lib" =~ $BASE ]] || echo "  $f needs $lib ($path)" ;;
      esac
    done
  done
)
[ -z "$bad" ] || { echo "$bad" >&2; echo "the pack needs libraries outside itself (above)" >&2; exit 1; }
echo "packed $(paste -sd' ' "$OUT/PACKAGES") into $OUT ($(du -sh "$OUT" | cut -f1))"

if [ "${1:-}" = "--verify" ]; then
  # A 2-rank hello (an MPI C program built here) run from the pack, with every system Open MPI,
  # PMIx, hwloc and libevent file replaced by an empty one in a private mount namespace.
  cat > "$work/hello.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, len; char name[MPI_MAX_LIBRARY_VERSION_STRING];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank); MPI_Comm_size(MPI_COMM_WORLD, &size);
  int token = rank == 0 ? 42 : 0;
  MPI_Bcast(&token, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Get_library_version(name, &len);
  printf("hello from rank %d of %d, token %d, %.24s\n", rank, size, token, name);
  MPI_Finalize();
  return token == 42 ? 0 : 1;
}
EOF
  /usr/bin/mpicc -o "$work/hello" "$work/hello.c"
  hide=$(ls -d /usr/bin/orterun /usr/bin/orted /etc/openmpi /usr/share/openmpi /usr/lib/$ARCH/openmpi \
    /usr/lib/$ARCH/pmix2 /usr/lib/$ARCH/libmpi.so* /usr/lib/$ARCH/libopen-*.so* /usr/lib/$ARCH/libhwloc.so* \
    /usr/lib/$ARCH/libevent*.so* /usr/lib/$ARCH/libmunge.so* /usr/lib/$ARCH/libmca_common* 2>/dev/null || true)
  unshare -m --propagation private bash -c '
    set -e
    empty=$(mktemp -d)
    for p in '"$(echo $hide)"'; do
      if [ -d "$p" ]; then mount --bind "$empty" "$p"; else mount --bind /dev/null "$p"; fi
    done
    source "'"$OUT"'/env.sh"
    echo "system Open MPI hidden: $(ls /usr/lib/'"$ARCH"'/openmpi | wc -l) entries in /usr/lib/'"$ARCH"'/openmpi; mpirun is $(command -v mpirun)"
    mpirun --allow-run-as-root --oversubscribe -np 2 "'"$work"'/hello"
  '
fi
