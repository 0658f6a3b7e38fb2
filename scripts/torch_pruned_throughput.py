"""PyTorch eager reference for examples/pruned_throughput.rs: the same random-weight
Llama-2-7B shape (32 blocks, hidden 4096, 32 heads, FFN 11008, vocab 32000) in bf16 on one GPU,
dense and with the same blocks removed; prompt processing (logits at every position) and greedy
generation with a KV cache (DynamicCache), timed the same way (median of repetitions, the
prefill of the generation prompt excluded).

    python3 scripts/torch_pruned_throughput.py --remove 6 --json out/torch_throughput.json

Needs torch with CUDA and transformers (any recent 4.x or 5.x).
"""
import argparse
import json
import statistics
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--remove", type=int, default=6)
    ap.add_argument("--prompt-batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--gen-batch", type=int, default=64)
    ap.add_argument("--gen-prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--attn", default="sdpa", help="sdpa or eager")
    ap.add_argument("--json")
    a = ap.parse_args()

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=False)
    cfg._attn_implementation = a.attn
    torch.manual_seed(0)
    t0 = time.time()
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    torch.cuda.synchronize()
    load_s = time.time() - t0
    L = cfg.num_hidden_layers
    removed = list(range(L - 1 - a.remove, L - 1))
    all_layers = list(model.model.layers)

    def use_layers(keep):
        model.model.layers = torch.nn.ModuleList([all_layers[i] for i in keep])
        for j, layer in enumerate(model.model.layers):
            layer.self_attn.layer_idx = j  # cache slots follow the kept order
        model.config.num_hidden_layers = len(keep)

    def ids(b, s, salt):
        i = torch.arange(b * s, device="cuda")
        return ((i * 7919 + salt * 104729) % (cfg.vocab_size - 10) + 5).reshape(b, s)

    prompt, gen_prompt = ids(a.prompt_batch, a.prompt_len, 1), ids(a.gen_batch, a.gen_prompt, 2)

    def timed(f, reps):
        f()
        torch.cuda.synchronize()
        out = []
        for _ in range(reps):
            t = time.time()
            f()
            torch.cuda.synchronize()
            out.append(time.time() - t)
        return statistics.median(out)

    @torch.inference_mode()
    def prefill():
        model(prompt, use_cache=False).logits

    @torch.inference_mode()
    def generate(new_tokens):
        cache = DynamicCache()
        out = model(gen_prompt, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t = time.time()
        for _ in range(1, new_tokens):
            out = model(nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        return time.time() - t

    rows = []
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, attention {a.attn}, init {load_s:.1f} s; pruned removes {removed}")
    print(f"| model | blocks | prompt {a.prompt_batch}x{a.prompt_len} tok/s | generation {a.gen_batch}x{a.new_tokens} tok/s |")
    print("|---|---:|---:|---:|")
    for name, keep in [("dense", list(range(L))), ("pruned", [i for i in range(L) if i not in removed])]:
        use_layers(keep)
        t_prompt = timed(prefill, a.reps)
        generate(4)
        t_gen = statistics.median([generate(a.new_tokens) for _ in range(min(a.reps, 3))])
        p = a.prompt_batch * a.prompt_len / t_prompt
        g = a.gen_batch * (a.new_tokens - 1) / t_gen
        print(f"| {name} | {len(keep)} | {p:.0f} | {g:.0f} |")
        rows.append({"model": name, "blocks": len(keep), "prompt_tok_s": p, "generation_tok_s": g})
    ideal = L / (L - a.remove)
    sp, sg = rows[1]["prompt_tok_s"] / rows[0]["prompt_tok_s"], rows[1]["generation_tok_s"] / rows[0]["generation_tok_s"]
    print(f"\nspeedup: prompt {sp:.3f}x, generation {sg:.3f}x; ideal L/(L-n) = {ideal:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "attention": a.attn, "removed": removed, "rows": rows,
                       "speedup_prompt": sp, "speedup_generation": sg, "ideal": ideal}, f, indent=2)


if __name__ == "__main__":
    main()
