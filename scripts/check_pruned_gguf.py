#!/usr/bin/env python3
"""Checks a pruned GGUF written by evop (`evop apply --out X.gguf`, `evop prune --gguf X.gguf`)
against its source, independently of evop: read with the `gguf` package (llama.cpp's gguf-py,
`pip install gguf`).

Checked: GGUF v3; `{arch}.block_count` is the source's minus the removed blocks; the tensor
names are the source's without the removed blocks' tensors, kept blocks renumbered from 0, in the
source's order; every tensor's type, shape and raw bytes equal those of the source tensor it was
renamed from; every tensor's data offset is a multiple of the alignment; per-block metadata arrays
(`{arch}.*` arrays of the old block count's length) hold the kept blocks' entries; every other
metadata value of the source is unchanged; `general.evop.removed_blocks` names the removed blocks.

    python3 scripts/check_pruned_gguf.py SOURCE.gguf PRUNED.gguf [--removed 3,17,18]

Without --removed, the removed blocks are read from the pruned file's `general.evop.removed_blocks`.
Exit status 0 when every check passes, 1 otherwise (each failure printed).
"""
import argparse
import re
import sys

import numpy as np
from gguf import GGUFReader, GGUFValueType

EVOP_PREFIX = "general.evop."


def field_value(field):
    """A metadata field's value as Python data (lists for arrays, str for strings)."""
    if field.types[0] == GGUFValueType.ARRAY:
        if field.types[-1] == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    return field.parts[field.data[0]][0].item()


def raw(t):
    return np.ascontiguousarray(t.data).reshape(-1).view(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source")
    ap.add_argument("pruned")
    ap.add_argument("--removed", help="removed blocks, comma-separated (default: from the pruned file)")
    a = ap.parse_args()
    src, out = GGUFReader(a.source), GGUFReader(a.pruned)
    failures = []

    def check(ok, message):
        if not ok:
            failures.append(message)

    arch = field_value(src.fields["general.architecture"]).decode()
    count_key = f"{arch}.block_count"
    old_l = field_value(src.fields[count_key])
    if a.removed is not None:
        removed = sorted(int(x) for x in a.removed.split(",") if x)
    else:
        removed = field_value(out.fields[EVOP_PREFIX + "removed_blocks"])
    kept = [i for i in range(old_l) if i not in removed]
    new_index = {old: new for new, old in enumerate(kept)}

    check(field_value(out.fields["GGUF.version"]) == 3, "not GGUF v3")
    check(field_value(out.fields[count_key]) == len(kept), f"{count_key} is {field_value(out.fields[count_key])}, expected {len(kept)}")
    check(field_value(out.fields[EVOP_PREFIX + "removed_blocks"]) == removed, "general.evop.removed_blocks differs from the removed blocks")

    # Metadata.
    for key, field in src.fields.items():
        if key.startswith("GGUF.") or key == count_key or key.startswith(EVOP_PREFIX):
            continue
        if key not in out.fields:
            failures.append(f"metadata `{key}` missing")
            continue
        want = field_value(field)
        if key.startswith(arch + ".") and field.types[0] == GGUFValueType.ARRAY and len(want) == old_l:
            want = [want[i] for i in kept]
        check(field_value(out.fields[key]) == want, f"metadata `{key}` differs")

    # Tensors.
    expected = []
    for t in src.tensors:
        m = re.match(r"blk\.(\d+)\.(.*)", t.name)
        if m is None:
            expected.append((t.name, t))
        elif int(m.group(1)) in new_index:
            expected.append((f"blk.{new_index[int(m.group(1))]}.{m.group(2)}", t))
    names = [t.name for t in out.tensors]
    check(names == [n for n, _ in expected], "tensor names or order differ from the expected ones")
    by_name = {t.name: t for t in out.tensors}
    compared = 0
    for name, s in expected:
        t = by_name.get(name)
        if t is None:
            failures.append(f"tensor `{name}` missing")
            continue
        check(t.tensor_type == s.tensor_type, f"tensor `{name}`: type {t.tensor_type.name}, source {s.tensor_type.name}")
        check(list(t.shape) == list(s.shape), f"tensor `{name}`: shape {list(t.shape)}, source {list(s.shape)}")
        check(t.n_bytes == s.n_bytes and np.array_equal(raw(t), raw(s)), f"tensor `{name}`: bytes differ from `{s.name}`")
        check(t.data_offset % out.alignment == 0, f"tensor `{name}`: data offset {t.data_offset} not aligned to {out.alignment}")
        compared += 1

    types = sorted({t.tensor_type.name for t in out.tensors})
    print(f"{a.pruned}: {arch}, {count_key} {old_l} -> {field_value(out.fields[count_key])} (removed {removed}), "
          f"{len(src.tensors)} -> {len(out.tensors)} tensors, {compared} compared byte for byte ({', '.join(types)}), "
          f"alignment {out.alignment}, {len(out.fields)} fields")
    for f in failures:
        print("FAIL:", f)
    print("OK" if not failures else f"{len(failures)} failures")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
