#!/usr/bin/env python3
"""Checks a healed Hugging Face directory written by evop (`evop heal --out DIR`, `evop prune` with
`--heal linear`) independently of evop: Hugging Face transformers loads it and measures perplexity on
the same tokens as `evop eval --model DIR --text TEXT --seqlen S --windows W --json J`.

The tokens follow evop's text protocol: the whole file encoded once with the directory's
tokenizer.json (no special tokens added), cut into consecutive windows of S tokens, the first W
kept; perplexity = exp(mean NLL of every next-token prediction inside each window).

    python3 scripts/check_healed_hf.py DIR TEXT --seqlen 256 --windows 8 --evop-json J [--tol 1e-3]

Prints both perplexities and their relative difference; exit status 0 when it is within --tol.
Needs torch, transformers and tokenizers (CPU wheels are enough).
"""
import argparse
import json
import math
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("text", type=Path)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--evop-json", type=Path, required=True, help="`evop eval --json` output on the same DIR and text")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest relative perplexity difference accepted")
    args = ap.parse_args()

    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.set_num_threads(2)
    config = json.loads((args.model_dir / "config.json").read_text())
    tok = Tokenizer.from_file(str(args.model_dir / "tokenizer.json"))
    ids = tok.encode(args.text.read_text(encoding="utf-8"), add_special_tokens=False).ids
    n = len(ids) // args.seqlen
    if n < args.windows:
        print(f"{args.text}: {len(ids)} tokens hold only {n} windows of {args.seqlen}", file=sys.stderr)
        return 1
    windows = torch.tensor([ids[i * args.seqlen:(i + 1) * args.seqlen] for i in range(args.windows)])
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows.split(4):
            logits = model(w).logits.double()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
            total += nll.item()
            count += w[:, 1:].numel()
    ppl_hf = math.exp(total / count)

    report = json.loads(args.evop_json.read_text())
    ppl_evop = find_ppl(report)
    rel = abs(ppl_hf - ppl_evop) / ppl_evop
    print(f"{config.get('model_type')} with {config.get('num_hidden_layers')} blocks, {args.windows} x {args.seqlen} tokens: "
          f"transformers {ppl_hf:.4f}, evop {ppl_evop:.4f}, relative difference {rel:.2e}")
    return 0 if rel <= args.tol else 1


def find_ppl(report) -> float:
    """The overall perplexity in `evop eval --json` output."""
    for path in (("perplexity", "overall", "perplexity"), ("eval", "overall", "perplexity"), ("overall", "perplexity")):
        v = report
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            return float(v)
    raise SystemExit(f"no overall perplexity in the evop JSON (keys: {list(report)})")


if __name__ == "__main__":
    sys.exit(main())
