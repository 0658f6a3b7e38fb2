"""The PyTorch loop a researcher writes to score depth-pruning candidates, timed: for every
candidate mask, the model's decoder-layer list is replaced by the kept layers, one full forward
runs over the calibration windows, and the loss is the mean next-token NLL or the mean KL
divergence to the dense model's next-token distributions (as SLEB's and EvoPress's reference
loops do: no state is reused between candidates). Reports candidate evaluations per second.

Candidate streams:
  --stream sleb:N          SLEB's greedy steps for N removals (each step scores every alive block
                           but the first and last alive, removes the best), losses computed here
  --stream random:N:COUNT  COUNT seeded random masks with N blocks removed
  --masks FILE             masks from a file: an evop checkpoint.json (every mask its search
                           evaluated), or JSON lines / a JSON list of {"removed": [...]} or [...]

Models: --model DIR (a Hugging Face directory, e.g. written by examples/save_pruned) or
--synthetic NAME (random weights of a real shape, seed 0: llama2-7b, qwen2.5-coder-1.5b).

    python3 scripts/torch_search_loop.py --synthetic llama2-7b --windows 8 --seqlen 512 \
        --stream sleb:6 --loss nll --json out/torch_sleb.json
    python3 scripts/torch_search_loop.py --model out/smollm2-dense --device cpu --dtype f32 \
        --windows 2 --seqlen 128 --stream random:6:8

Token ids are seeded random draws over the vocabulary (the forward's time does not depend on
them). Needs torch and transformers (4.x or 5.x).
"""
import argparse
import json
import random
import sys
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


# Random-weight models of real shapes (the forward's time does not depend on the weights): the
# Llama-2-7B shape, and Qwen2.5-Coder-1.5B's (q/k/v biases, grouped-query attention, tied
# 151,936-token head) for timing against evop on the real GGUF.
SYNTHETIC = {
    "llama2-7b": (LlamaConfig, dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                                    rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2.5-coder-1.5b": (Qwen2Config, dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                             num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                             max_position_embeddings=32768, rms_norm_eps=1e-6,
                                             tie_word_embeddings=True)),
}


def synthetic(name, dtype, device):
    if name not in SYNTHETIC:
        sys.exit(f"unknown synthetic model `{name}` (known: {', '.join(SYNTHETIC)})")
    config_class, fields = SYNTHETIC[name]
    cfg = config_class(**fields)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg).to(dtype).eval()


def read_masks(path, num_layers):
    text = open(path).read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(doc, dict) and "memo" in doc:  # an evop checkpoint
        masks = [e[0]["removed"] for level in doc["memo"]["levels"] for e in level["entries"]]
    elif isinstance(doc, list):
        masks = [m["removed"] if isinstance(m, dict) else m for m in doc]
    else:
        sys.exit(f"{path}: neither an evop checkpoint nor a list of masks")
    for m in masks:
        if any(not (0 <= b < num_layers) for b in m):
            sys.exit(f"{path}: mask {m} names a block outside 0..{num_layers - 1}")
    return masks


class Loop:
    """The researcher's loop: mask the layer list, one full forward, the loss."""

    def __init__(self, model, ids, loss, batch):
        self.model, self.ids, self.loss, self.batch = model, ids, loss, batch
        self.layers = model.model.layers
        self.dense = None
        if loss == "kl":
            self.dense = [torch.log_softmax(self.logits(chunk, []).float(), -1) for chunk in self.chunks()]
        self.evaluations = 0

    def chunks(self):
        return [self.ids[i:i + self.batch] for i in range(0, len(self.ids), self.batch)]

    @torch.inference_mode()
    def logits(self, chunk, removed):
        gone = set(removed)
        self.model.model.layers = torch.nn.ModuleList([l for i, l in enumerate(self.layers) if i not in gone])
        self.model.config.num_hidden_layers = len(self.model.model.layers)
        try:
            return self.model(input_ids=chunk, use_cache=False).logits
        finally:
            self.model.model.layers = self.layers
            self.model.config.num_hidden_layers = len(self.layers)

    @torch.inference_mode()
    def score(self, removed):
        total, count = 0.0, 0
        for c, chunk in enumerate(self.chunks()):
            z = self.logits(chunk, removed)[:, :-1].float()
            logq = torch.log_softmax(z, -1)
            if self.loss == "nll":
                nll = -logq.gather(-1, chunk[:, 1:, None]).squeeze(-1)
                total += nll.sum().item()
            else:
                logp = self.dense[c][:, :-1]
                total += (logp.exp() * (logp - logq)).sum().item()
            count += z.shape[0] * z.shape[1]
        self.evaluations += 1
        return total / count


def sleb_stream(loop, num_layers, n):
    """SLEB (Song et al. 2024): greedy, never the first or last alive block."""
    removed = []
    for _ in range(n):
        alive = [b for b in range(num_layers) if b not in removed]
        best = min(alive[1:-1], key=lambda b: loop.score(removed + [b]))
        removed.append(best)
    return sorted(removed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--synthetic")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=DTYPES)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--batch", type=int, default=8, help="windows per forward")
    ap.add_argument("--loss", default="nll", choices=["nll", "kl"])
    ap.add_argument("--stream", help="sleb:N or random:N:COUNT")
    ap.add_argument("--masks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    if (a.model is None) == (a.synthetic is None):
        sys.exit("give exactly one of --model DIR and --synthetic NAME")
    if (a.stream is None) == (a.masks is None):
        sys.exit("give exactly one of --stream and --masks")
    dtype = DTYPES[a.dtype]
    t0 = time.time()
    if a.model:
        model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(a.device).eval()
    else:
        model = synthetic(a.synthetic, dtype, a.device)
    load_s = time.time() - t0
    num_layers = len(model.model.layers)
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, model.config.vocab_size, (a.windows, a.seqlen), generator=g).to(a.device)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    t0 = time.time()
    loop = Loop(model, ids, a.loss, a.batch)
    sync()
    setup_s = time.time() - t0
    loop.score([])  # warm-up, not counted
    loop.evaluations = 0
    sync()
    t0 = time.time()
    answer = None
    if a.masks:
        masks = read_masks(a.masks, num_layers)
        for m in masks:
            loop.score(m)
        stream = f"masks from {a.masks}"
    else:
        kind, *rest = a.stream.split(":")
        if kind == "sleb" and len(rest) == 1:
            answer = sleb_stream(loop, num_layers, int(rest[0]))
        elif kind == "random" and len(rest) == 2:
            n, count = int(rest[0]), int(rest[1])
            rng = random.Random(a.seed)
            for _ in range(count):
                loop.score(sorted(rng.sample(range(num_layers), n)))
        else:
            sys.exit(f"--stream `{a.stream}`: expected sleb:N or random:N:COUNT")
        stream = a.stream
    sync()
    secs = time.time() - t0
    out = {
        "implementation": "pytorch loop (layer list masked, one full forward per candidate)",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "dtype": a.dtype,
        "model": a.model or f"synthetic:{a.synthetic}",
        "blocks": num_layers,
        "windows": a.windows,
        "seqlen": a.seqlen,
        "loss": a.loss,
        "stream": stream,
        "evaluations": loop.evaluations,
        "seconds": secs,
        "evaluations_per_s": loop.evaluations / secs if secs > 0 else None,
        "load_s": load_s,
        "setup_s": setup_s,
        "sleb_removed": answer,
    }
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
