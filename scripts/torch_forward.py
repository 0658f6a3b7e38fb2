#!/usr/bin/env python3
"""PyTorch + transformers reference for examples/forward_throughput.rs: the same SmolLM2 forward
(logits for every position) on the same windows, tokens/s as the median of timed repetitions.

Setup (by hand, CPU): python3 -m pip install torch transformers safetensors
The model directory is the dense SmolLM2 written by evop (identical weights to the GGUF):
  cargo run --release --example save_pruned -- ~/.cache/evop/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf --out out/smollm2-dense
  python3 scripts/torch_forward.py --model out/smollm2-dense
"""
import argparse, json, statistics, time
import torch
from transformers import AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--model", default="out/smollm2-dense")
p.add_argument("--reps", type=int, default=5)
p.add_argument("--shapes", default="128x1,128x8,512x1,512x8")
p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = default)")
p.add_argument("--json")
a = p.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="sdpa").eval()

def timed(f, reps):
    f()
    ts = []
    for _ in range(reps):
        s = time.perf_counter(); f(); ts.append(time.perf_counter() - s)
    return statistics.median(ts)

x = torch.randn(2048, 2048)
t = timed(lambda: x @ x, a.reps)
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}; matmul 2048^3: {2 * 2048**3 / t / 1e9:.1f} GFLOP/s")
rows = []
print("| window | batch | forward tok/s |")
print("|---:|---:|---:|")
with torch.inference_mode():
    for shape in a.shapes.split(","):
        s, b = map(int, shape.split("x"))
        ids = torch.tensor([[(i * 7919) % 40000 + 100 for i in range(r * s, (r + 1) * s)] for r in range(b)])
        t = timed(lambda: model(input_ids=ids, use_cache=False).logits, a.reps)
        rows.append({"seq": s, "batch": b, "tokens_per_s": s * b / t})
        print(f"| {s} | {b} | {s * b / t:.0f} |")
if a.json:
    json.dump({"torch": torch.__version__, "rows": rows}, open(a.json, "w"), indent=1)
