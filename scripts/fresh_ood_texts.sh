#!/usr/bin/env bash
# Builds two out-of-domain texts from files every Debian/Ubuntu machine with Python 3.11 has, for a
# check on text that nothing in evop calibrated, tuned or chose a setting on (docs/healing.md):
#   code-stdlib.txt    CPython 3.11's argparse, dataclasses, shutil, configparser, textwrap (Python code)
#   prose-licenses.txt GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3 from /usr/share/common-licenses (legal prose)
# Usage: scripts/fresh_ood_texts.sh OUT_DIR    (prints each file's size and sha256)
set -euo pipefail
out=${1:?usage: scripts/fresh_ood_texts.sh OUT_DIR}
py=/usr/lib/python3.11
lic=/usr/share/common-licenses
mkdir -p "$out"
for f in argparse.py dataclasses.py shutil.py configparser.py textwrap.py; do
  [ -f "$py/$f" ] || { echo "missing $py/$f (needs Python 3.11's standard library)" >&2; exit 1; }
  cat "$py/$f"; printf '\n\n'
done > "$out/code-stdlib.txt.tmp" && mv "$out/code-stdlib.txt.tmp" "$out/code-stdlib.txt"
for f in GPL-3 Apache-2.0 MPL-2.0 GFDL-1.3; do
  [ -f "$lic/$f" ] || { echo "missing $lic/$f (Debian's base-files)" >&2; exit 1; }
  cat "$lic/$f"; printf '\n\n'
done > "$out/prose-licenses.txt.tmp" && mv "$out/prose-licenses.txt.tmp" "$out/prose-licenses.txt"
wc -c "$out/code-stdlib.txt" "$out/prose-licenses.txt"
sha256sum "$out/code-stdlib.txt" "$out/prose-licenses.txt"
