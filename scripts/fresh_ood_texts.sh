#!/usr/bin/env bash
# Builds two out-of-domain texts from files every Debian/Ubuntu machine with Python 3.11 has, for a
# check on text that nothing in evop calibrated, tuned or chose a setting on (docs/healing.md):
#   code-stdlib.txt    CPython 3.11's argparse, dataclasses, shutil, configparser, textwrap (Python code)
#   prose-licenses.txt GPL-3, Apache-2.0, MPL-2.0, GFDL-1.3 from /usr/share/common-licenses (legal prose)
# and a second set, built and sealed on 2026-12-07 before any healer ran on it (docs/healing.md):
#   code-rust.txt      regex-syntax 0.8.12's HIR modules from the cargo registry (Rust code)
#   prose-pyref.txt    CPython 3.11's pydoc topics: the language reference's English text
#   prose-gitnotes.txt git's release notes for 2.30.0 .. 2.39.0 from /usr/share/doc/git (technical prose)
# and a third set, built and sealed on 2026-12-07 (later that day) before any healer ran on it:
#   code-c.txt         CPython 3.11's C API headers object.h, abstract.h, unicodeobject.h, longobject.h,
#                      dictobject.h, pyerrors.h, listobject.h (C code and its comments)
#   code-perl.txt      Perl 5.36's Getopt::Long, File::Temp, File::Find, Text::Balanced (Perl code and POD)
#   prose-perldiag.txt Perl 5.36's perldiag.pod: every diagnostic message explained (technical prose)
# and a fourth set, built and sealed on 2026-12-07 (a later session) before any healer ran on it:
#   code-cmake.txt     CMake 3.25's ExternalProject, FetchContent and FindMPI modules (CMake code, RST comments)
#   code-js.txt        npm's install, exec, audit, config, cache, ci, init, doctor commands (JavaScript)
#   prose-npmdocs.txt  npm's documentation of npm install, update, audit, link, exec (Markdown technical prose)
# Usage: scripts/fresh_ood_texts.sh OUT_DIR    (prints each file's size and sha256)
set -euo pipefail
out=${1:?usage: scripts/fresh_ood_texts.sh OUT_DIR}
py=/usr/lib/python3.11
lic=/usr/share/common-licenses
mkdir -p "$out"
# concat NAME DIR WHAT FILE...: DIR/FILE... joined (each followed by a blank line) into
# $out/NAME through a temporary file; a missing file is an error naming it and WHAT provides it.
concat() {
  local name=$1 dir=$2 what=$3 f
  shift 3
  for f in "$@"; do
    [ -f "$dir/$f" ] || { echo "missing $dir/$f ($what)" >&2; exit 1; }
  done
  for f in "$@"; do cat "$dir/$f"; printf '\n\n'; done > "$out/$name.tmp" && mv "$out/$name.tmp" "$out/$name"
}
concat code-stdlib.txt "$py" "needs Python 3.11's standard library" argparse.py dataclasses.py shutil.py configparser.py textwrap.py
concat prose-licenses.txt "$lic" "Debian's base-files" GPL-3 Apache-2.0 MPL-2.0 GFDL-1.3
rx=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/regex-syntax-0.8.12 2>/dev/null | head -1)
[ -n "$rx" ] || { echo "missing regex-syntax-0.8.12 in the cargo registry (cargo fetch in this workspace brings it)" >&2; exit 1; }
for f in "$rx"/src/hir/*.rs; do cat "$f"; printf '\n\n'; done > "$out/code-rust.txt.tmp" && mv "$out/code-rust.txt.tmp" "$out/code-rust.txt"
python3.11 -c 'from pydoc_data.topics import topics
print("\n\n".join(topics[k].strip() for k in sorted(topics)))' > "$out/prose-pyref.txt.tmp" && mv "$out/prose-pyref.txt.tmp" "$out/prose-pyref.txt"
rn=/usr/share/doc/git/RelNotes
for v in 30 31 32 33 34 35 36 37 38 39; do
  f=$(ls "$rn/2.$v.0.txt"* 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "missing $rn/2.$v.0.txt (Debian's git package)" >&2; exit 1; }
  zcat -f "$f"; printf '\n\n'
done > "$out/prose-gitnotes.txt.tmp" && mv "$out/prose-gitnotes.txt.tmp" "$out/prose-gitnotes.txt"
inc=/usr/include/python3.11
concat code-c.txt "$inc" "Debian's libpython3.11-dev" object.h abstract.h unicodeobject.h longobject.h dictobject.h pyerrors.h listobject.h
pl=/usr/share/perl/5.36
concat code-perl.txt "$pl" "Debian's perl-modules-5.36" Getopt/Long.pm File/Temp.pm File/Find.pm Text/Balanced.pm
[ -f "$pl/pod/perldiag.pod" ] || { echo "missing $pl/pod/perldiag.pod (Debian's perl-modules-5.36)" >&2; exit 1; }
cp "$pl/pod/perldiag.pod" "$out/prose-perldiag.txt.tmp" && mv "$out/prose-perldiag.txt.tmp" "$out/prose-perldiag.txt"
cm=/usr/share/cmake-3.25/Modules
concat code-cmake.txt "$cm" "Debian's cmake-data 3.25" ExternalProject.cmake FetchContent.cmake FindMPI.cmake
npm=/usr/lib/node_modules/npm
concat code-js.txt "$npm/lib/commands" "Node.js's npm" install.js exec.js audit.js config.js cache.js ci.js init.js doctor.js
concat prose-npmdocs.txt "$npm/docs/content/commands" "Node.js's npm" npm-install.md npm-update.md npm-audit.md npm-link.md npm-exec.md
set -- code-stdlib.txt prose-licenses.txt code-rust.txt prose-pyref.txt prose-gitnotes.txt code-c.txt code-perl.txt prose-perldiag.txt code-cmake.txt code-js.txt prose-npmdocs.txt
(cd "$out" && wc -c "$@" && sha256sum "$@")
