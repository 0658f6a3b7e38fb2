#!/usr/bin/env python3
"""Writes the GGUF dequantisation fixture: a small GGUF file with tensors in Q4_K, Q5_0, Q6_K, Q8_0 and Q4_1
(the types of the real Qwen2.5-Coder and SmolLM2 files) and the values the `gguf` package's reference
dequantiser (`gguf.quants.dequantize`, a NumPy port of ggml's) gives for them.

Run by hand (see scripts/README.md); the outputs are committed and read by crates/evop-model/tests/gguf_dequant.rs.

Two tensors per type, seeded:
  <type>.from_f32       4 x 512 random f32 values N(0, 1) (with a few blocks scaled by 1e-3 and 30, and one all
                        zero) quantised. Q5_0, Q8_0 and Q4_1 use `gguf.quants.quantize`; gguf 0.19 has no
                        quantiser for Q4_K or Q6_K, so those use the simple min/max quantisers below (their
                        packing is checked by round-tripping through `gguf.quants.dequantize`).
  <type>.random_blocks  2 x 512 values as random block bytes: every quant bit pattern occurs (Q8_0 -128,
                        6-bit scales of 63, negative f16 scales), with the f16 fields set to finite values.

Outputs, under crates/evop-model/tests/fixtures/gguf_dequant/:
  quants.gguf           general.architecture = "evop-dequant-fixture", the 10 tensors (GGUF v3)
  expected.safetensors  the reference f32 values under the same names, shape [rows, cols]
  expected.json         {"tensors": {name: {"type": "Q4_K", "shape": [rows, cols]}}, versions, seed}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "evop-model" / "tests" / "fixtures" / "gguf_dequant"
SEED = 20250101
QK_K = 256


def f16_bytes(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(x.shape[0], 2)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """Q4_K (144 bytes per 256 values): d, dmin (f16), 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Value = d * sc[j] * q - dmin * m[j] for sub-block j of 32. A plain min/max fit, not llama.cpp's search."""
    b = x.reshape(-1, 8, 32).astype(np.float32)
    n = b.shape[0]
    lo = np.minimum(b.min(-1), 0.0)
    hi = b.max(-1)
    scale = (hi - lo) / 15.0
    mins = -lo
    d = (scale.max(-1) / 63.0).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1) / 63.0).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(0, 63).astype(np.uint8)
        m = np.where(dmin[:, None] > 0, np.rint(mins / dmin[:, None]), 0).clip(0, 63).astype(np.uint8)
        step = d[:, None] * sc
        q = np.where(step[..., None] > 0, np.rint((b + (dmin[:, None] * m)[..., None]) / step[..., None]), 0)
    q = q.clip(0, 15).astype(np.uint8)  # [n, 8, 32]
    scales = np.zeros((n, 12), np.uint8)
    scales[:, 0:4] = (sc[:, 0:4] & 0x3F) | ((sc[:, 4:8] >> 4) << 6)
    scales[:, 4:8] = (m[:, 0:4] & 0x3F) | ((m[:, 4:8] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    # Byte l of 32-byte chunk c holds sub-block 2c in its low nibble and sub-block 2c + 1 in its high one.
    qs = (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(n, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), scales, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Q6_K (210 bytes per 256 values): ql (128), qh (64), 16 int8 scales, d (f16).
    Value = d * scale[j] * (q - 32) for sub-block j of 16, q in 0..63. A plain absmax fit."""
    b = x.reshape(-1, 16, 16).astype(np.float32)
    n = b.shape[0]
    amax = np.abs(b).max(-1)
    scale = amax / 31.0
    d = (np.abs(scale).max(-1) / 127.0).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[:, None] > 0, np.rint(scale / d[:, None]), 0).clip(-128, 127).astype(np.int8)
        step = d[:, None] * sc
        q = np.where(step[..., None] != 0, np.rint(b / step[..., None]), 0)
    q = (q.clip(-32, 31) + 32).astype(np.uint8).reshape(n, 2, 128)  # two halves of 128
    # Half h: ql[h*64 + l] = q[h][l] (low nibble) | q[h][64 + l] << 4, for l < 64;
    # qh[h*32 + l] bits 2k..2k+1 = high 2 bits of q[h][32k + l], for k < 4, l < 32.
    low, high = q & 0x0F, q >> 4
    ql = (low[:, :, 0:64] | (low[:, :, 64:128] << 4)).reshape(n, 128)
    hq = high.reshape(n, 2, 4, 32)
    qh = (hq[:, :, 0] | (hq[:, :, 1] << 2) | (hq[:, :, 2] << 4) | (hq[:, :, 3] << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), f16_bytes(d)], axis=1)


# (type name, block size in values, bytes per block, offsets of f16 fields within a block)
LAYOUT = {
    "Q4_K": (256, 144, [0, 2]),
    "Q6_K": (256, 210, [208]),
    "Q5_0": (32, 22, [0]),
    "Q8_0": (32, 34, [0]),
    "Q4_1": (32, 20, [0, 2]),
}


def random_blocks(rng, qtype: str, n_values: int) -> np.ndarray:
    """Random block bytes with finite f16 fields (magnitudes 1e-3 .. 1e-1, random signs)."""
    block, nbytes, f16_at = LAYOUT[qtype]
    n = n_values // block
    raw = rng.integers(0, 256, size=(n, nbytes), dtype=np.uint8)
    for off in f16_at:
        v = rng.uniform(1e-3, 1e-1, size=n) * rng.choice([-1.0, 1.0], size=n)
        raw[:, off:off + 2] = f16_bytes(v)
    return raw


def main() -> int:
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import quants
    from importlib.metadata import version
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)
    rows, cols = 4, 512
    tensors: dict[str, tuple[str, np.ndarray]] = {}  # name -> (type, raw bytes [rows, bytes per row])
    notes = {}
    for name in ["Q4_K", "Q5_0", "Q6_K", "Q8_0", "Q4_1"]:
        qt = T[name]
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x[1, :256] *= 1e-3  # small values (a whole Q4_K/Q6_K super-block)
        x[2, 256:] *= 30.0  # large values
        x[3, :32] = 0.0  # an all-zero Q*_0 / Q4_1 block
        if name == "Q4_K":
            q = quantize_q4_k(x).reshape(rows, -1)
            how = "evop's numpy min/max quantiser (gguf 0.19 has none)"
        elif name == "Q6_K":
            q = quantize_q6_k(x).reshape(rows, -1)
            how = "evop's numpy absmax quantiser (gguf 0.19 has none)"
        else:
            q = quants.quantize(x, qt)
            how = "gguf.quants.quantize"
        back = quants.dequantize(q, qt)
        err = float(np.abs(back - x).max() / np.abs(x).max())
        # A wrong packing gives errors of the order of the values themselves.
        assert err < 0.08, f"{name}: quantise/dequantise round trip error {err} of max |x|"
        tensors[f"{name}.from_f32"] = (name, q)
        notes[f"{name}.from_f32"] = f"{how}; round-trip max error {err:.4f} of max |x|"
        rb = random_blocks(rng, name, 2 * cols).reshape(2, -1)
        tensors[f"{name}.random_blocks"] = (name, rb)
        notes[f"{name}.random_blocks"] = "random block bytes, finite f16 fields"

    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "quants.gguf"
    w = gguf.GGUFWriter(str(path), arch="evop-dequant-fixture")
    expected, meta = {}, {}
    for tname, (qtype, raw) in tensors.items():
        qt = T[qtype]
        w.add_tensor(tname, raw, raw_dtype=qt)
        ref = quants.dequantize(raw, qt).astype(np.float32)
        assert np.isfinite(ref).all(), tname
        expected[tname] = np.ascontiguousarray(ref)
        meta[tname] = {"type": qtype, "shape": list(ref.shape), "how": notes[tname]}
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Read back with gguf's own reader: the types, shapes and values are what was meant.
    r = gguf.GGUFReader(str(path))
    assert len(r.tensors) == len(tensors)
    for t in r.tensors:
        assert t.tensor_type.name == meta[t.name]["type"], (t.name, t.tensor_type)
        assert [int(s) for s in t.shape[::-1]] == meta[t.name]["shape"], (t.name, t.shape)
        assert np.array_equal(quants.dequantize(t.data, t.tensor_type), expected[t.name]), t.name

    save_file(expected, str(OUT / "expected.safetensors"))
    info = {
        "what": "reference dequantisation of quants.gguf by gguf.quants.dequantize (NumPy port of ggml), f32",
        "tensors": meta,
        "seed": SEED,
        "gguf": version("gguf"),
        "numpy": np.__version__,
    }
    (OUT / "expected.json").write_text(json.dumps(info, indent=2) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(OUT.iterdir())}
    print(f"{OUT}: {sizes}, {sum(sizes.values())} bytes")
    for k, v in notes.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
