#!/usr/bin/env python3
"""Writes the healing fixtures: transformers' logits of tiny models whose MLP output projection holds
a folded linear patch, with blocks removed.

For each tiny model of scripts/make_fixtures.py (crates/evop-model/tests/fixtures/<name>/): a seeded
patch T (h x h, near the identity, f64) is folded into block 0's MLP output projection
(down_proj, or fc2 with its bias for OPT: W <- T^T W, b <- T^T b), blocks 1 and 2 are removed, and the
logits on the fixture's input_ids are written to <name>/heal.safetensors (`patch` F64 [h, h],
`logits_healed` F32 [2, 24, 128]) with <name>/heal.json ({"block": 0, "removed": [1, 2]}).
evop's test (crates/evop-heal/tests/hf_fixtures.rs) folds the same T with its own code and compares.

Run by hand where torch and transformers are installed; the outputs are committed:
  python3 scripts/make_heal_fixtures.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import MODEL_FIXTURES, layer_list_owner, logits_with_skipped, torch_modules  # noqa: E402

NAMES = ["llama", "llama_tied", "mistral", "qwen2", "opt_pre"]  # post-norm OPT cannot hold a fold
BLOCK, REMOVED = 0, [1, 2]
SEED = 20261207


def mlp_out(layer):
    return layer.mlp.down_proj if hasattr(layer, "mlp") else layer.fc2


def main() -> int:
    torch, transformers, load_file, save_file = torch_modules()
    import numpy as np

    for name in NAMES:
        d = MODEL_FIXTURES / name
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        ids = load_file(str(d / "expected.safetensors"))["input_ids"]
        h = model.config.hidden_size
        rng = np.random.default_rng(SEED)
        t = np.eye(h) + 0.1 * rng.standard_normal((h, h)) / np.sqrt(h)
        tt = torch.from_numpy(t.T.copy())
        proj = mlp_out(layer_list_owner(model).layers[BLOCK])
        with torch.no_grad():
            proj.weight.copy_((tt @ proj.weight.double()).float())
            if proj.bias is not None:
                proj.bias.copy_((tt @ proj.bias.double()).float())
        logits = logits_with_skipped(torch, model, ids, REMOVED)
        save_file({"patch": torch.from_numpy(t), "logits_healed": logits}, str(d / "heal.safetensors"))
        (d / "heal.json").write_text(json.dumps({"block": BLOCK, "removed": REMOVED, "seed": SEED,
                                                 "transformers": transformers.__version__}, indent=1) + "\n")
        print(f"{name}: bias {proj.bias is not None}, logits {tuple(logits.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
