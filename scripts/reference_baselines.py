#!/usr/bin/env python3
"""Independent reference for evop-baselines: SLEB's per-step loss tables, ShortGPT's Block
Influence, one-shot single-removal losses and angular distances, computed with Hugging Face
transformers (PyTorch, CPU, float32) on SmolLM2-135M-Instruct truncated to its first blocks.

It shares no code with evop: the GGUF is dequantised by transformers/gguf, blocks are removed by
rebuilding `model.model.layers`, hidden states are captured with forward hooks. Only the token
ids come from evop (transformers' GGUF tokenizer conversion differs from the GGUF's `pre =
smollm` tokenizer, see shared/ASSETS.md): the Rust test `smollm2_reference` writes them.

Usage (from the repository root; the asset cache is $EVOP_CACHE_DIR, else $XDG_CACHE_HOME/evop,
else ~/.cache/evop, as evop-assets uses):

    EVOP_WRITE_FIXTURES=1 cargo test --release -p evop-baselines --test smollm2_reference windows
    python3 scripts/reference_baselines.py        # about 20 s on 2 cores

Input:  crates/evop-baselines/tests/fixtures/smollm2_windows.json   {"blocks", "windows": [[id, ...], ...]}
Output: crates/evop-baselines/tests/fixtures/smollm2_reference.json

Definitions (as in evop-baselines and the papers):
- SLEB (Song et al., ICML 2024; jiwonsong-dev/SLEB sleb.py): at each step, for j in
  range(early_barrier, len(alive) - latter_barrier) switch off alive[j]; loss = sum over windows of
  the window's mean token cross-entropy (sleb.py's `nlls()` is this times seqlen); remove the first
  lowest (strict <).
- ShortGPT (Men et al. 2024): BI_i = 1 - mean over all tokens of cos(input of block i, output of
  block i), on the residual stream (the last block's output before the final norm).
- Angular distance (Gromov et al. 2024): arccos(cos(x_l, x_{l+n})) / pi at the last token,
  averaged over windows, for every start l.
"""
import argparse
import json
import math
import os
import pathlib
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "crates/evop-baselines/tests/fixtures"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> pathlib.Path:
    if os.environ.get("EVOP_CACHE_DIR"):
        return pathlib.Path(os.environ["EVOP_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]) / "evop"
    return pathlib.Path.home() / ".cache/evop"


def load_truncated(blocks: int):
    model_dir = cache_root() / "smollm2-135m-instruct"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), gguf_file=GGUF_NAME, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    all_layers = list(model.model.layers)
    assert len(all_layers) == 30, len(all_layers)
    return model, all_layers[:blocks]


def set_layers(model, layers):
    """Runs exactly `layers`, in order (a removed block is absent: it returns its input)."""
    model.model.layers = torch.nn.ModuleList(layers)
    model.config.num_hidden_layers = len(layers)
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[: len(layers)]


@torch.no_grad()
def calibration_loss(model, windows) -> float:
    """Sum over windows of the window's mean next-token cross-entropy (batch size 1, as sleb.py)."""
    total = 0.0
    for w in windows:
        ids = torch.tensor([w], dtype=torch.long)
        logits = model(input_ids=ids, use_cache=False).logits[0].float()
        total += F.cross_entropy(logits[:-1], ids[0, 1:], reduction="mean").item()
    return total


def sleb(model, layers, windows, n, early_barrier=1, latter_barrier=1):
    alive = list(range(len(layers)))
    steps = []
    for _ in range(n):
        removed_before = [b for b in range(len(layers)) if b not in alive]
        candidates = []
        min_loss, min_idx = 1e99, -1
        for j in range(early_barrier, len(alive) - latter_barrier):
            set_layers(model, [layers[b] for b in alive if b != alive[j]])
            loss = calibration_loss(model, windows)
            candidates.append({"block": alive[j], "loss": loss})
            if loss < min_loss:
                min_loss, min_idx = loss, j
        steps.append({"removed_before": removed_before, "candidates": candidates,
                      "removed": alive[min_idx], "loss": min_loss})
        del alive[min_idx]
    return steps


@torch.no_grad()
def boundary_states(model, layers, windows):
    """Per window: the L + 1 residual-stream states (input of each block, output of the last)."""
    set_layers(model, layers)
    captured = []

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        y = output[0] if isinstance(output, tuple) else output
        captured.append((x.detach().double(), y.detach().double()))

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in layers]
    out = []
    try:
        for w in windows:
            captured.clear()
            model(input_ids=torch.tensor([w], dtype=torch.long), use_cache=False)
            assert len(captured) == len(layers)
            for i in range(1, len(layers)):  # each block's input is the previous block's output
                assert torch.equal(captured[i][0], captured[i - 1][1])
            out.append([c[0][0] for c in captured] + [captured[-1][1][0]])
    finally:
        for h in handles:
            h.remove()
    return out


def shortgpt_scores(states):
    num_blocks = len(states[0]) - 1
    scores = []
    for i in range(num_blocks):
        cos = torch.cat([F.cosine_similarity(s[i], s[i + 1], dim=-1) for s in states])
        scores.append(1.0 - cos.mean().item())
    return scores


def angular_distances(states, n):
    num_blocks = len(states[0]) - 1
    out = []
    for start in range(num_blocks - n + 1):
        d = [math.acos(max(-1.0, min(1.0, F.cosine_similarity(s[start][-1], s[start + n][-1], dim=-1).item()))) / math.pi
             for s in states]
        out.append({"start": start, "distance": sum(d) / len(d)})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sleb-n", type=int, default=4)
    ap.add_argument("--angular-n", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    spec = json.loads((FIXTURES / "smollm2_windows.json").read_text())
    blocks, windows = spec["blocks"], spec["windows"]
    t0 = time.time()
    model, layers = load_truncated(blocks)

    set_layers(model, layers)
    dense_loss = calibration_loss(model, windows)
    one_shot = []
    for b in range(blocks):
        set_layers(model, [layers[k] for k in range(blocks) if k != b])
        one_shot.append({"block": b, "loss": calibration_loss(model, windows)})
    steps = sleb(model, layers, windows, args.sleb_n)
    states = boundary_states(model, layers, windows)
    result = {
        "model": GGUF_NAME,
        "blocks": blocks,
        "windows": windows,
        "dense_loss": dense_loss,
        "one_shot": one_shot,
        "sleb": {"n": args.sleb_n, "early_barrier": 1, "latter_barrier": 1, "steps": steps,
                 "removal_order": [s["removed"] for s in steps]},
        "shortgpt_scores": shortgpt_scores(states),
        "angular": {"n": args.angular_n, "tokens": "last", "runs": angular_distances(states, args.angular_n)},
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (FIXTURES / "smollm2_reference.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"SLEB removal order {result['sleb']['removal_order']}, dense loss {dense_loss:.5f}, "
          f"{time.time() - t0:.1f} s")
    for s in steps:
        losses = sorted(c["loss"] for c in s["candidates"])
        margin = (losses[1] - losses[0]) / losses[0] if len(losses) > 1 else float("inf")
        print(f"  step removes {s['removed']}: loss {s['loss']:.5f}, relative margin to runner-up {margin:.2e}")


if __name__ == "__main__":
    main()
