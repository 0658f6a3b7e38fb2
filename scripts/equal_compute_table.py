#!/usr/bin/env python3
"""Tables of the equal-compute study (docs/results.md) from the rows of examples/equal_compute.rs.

For every model and n: SLEB's curve (mean over seeds of eval perplexity, worst-topic perplexity and
search seconds at each token budget) and every EvoP configuration, with its ratio to SLEB at each
budget whose mean time is at least EvoP's (EvoP had finished by then: equal or less compute).
SLEB rows are taken from the first file that has them for a model (one draw of random windows per
seed; later files may hold SLEB rows of another draw, which are left out).

    python3 scripts/equal_compute_table.py docs/results/equal-smollm2.rows.jsonl docs/results/equal-smollm2-r2.rows.jsonl \
        docs/results/equal-qwen05.rows.jsonl docs/results/equal-qwen05-r2.rows.jsonl
"""
import json, statistics, sys
from collections import defaultdict

rows, sleb_source = [], {}
for path in sys.argv[1:]:
    for line in open(path):
        r = json.loads(line)
        if r["method"] == "sleb":
            if sleb_source.setdefault(r["model"], path) != path:
                continue
        rows.append(r)

cells = defaultdict(lambda: defaultdict(list))
for r in rows:
    key = r["method"] if r["method"] != "sleb" else f"sleb:{r['tokens']}"
    cells[(r["model"], r["n"])][key].append(r)

mean = lambda xs: statistics.fmean(xs)
for (model, n), methods in sorted(cells.items()):
    dtype = next(iter(methods.values()))[0]["dtype"]
    print(f"\n**{model}, n = {n}** ({dtype}, one H200; means over seeds)\n")
    print("| method | tokens | seeds | eval PPL | worst topic | search s | vs SLEB at equal or more time |")
    print("|---|---:|---:|---:|---:|---:|---|")
    sleb = {int(k.split(':')[1]): v for k, v in methods.items() if k.startswith("sleb:")}
    curve = sorted((mean([r["seconds"] for r in v]), b, mean([r["eval_ppl"] for r in v])) for b, v in sleb.items())
    for b in sorted(sleb):
        v = sleb[b]
        print(f"| SLEB | {b} | {len(v)} | {mean([r['eval_ppl'] for r in v]):.2f} | {mean([r['worst_topic_ppl'] for r in v]):.2f} | {mean([r['seconds'] for r in v]):.1f} | |")
    for m, v in methods.items():
        if m.startswith("sleb:"):
            continue
        ppl, secs = mean([r["eval_ppl"] for r in v]), mean([r["seconds"] for r in v])
        verdict = ", ".join(f"{b}: {100 * (ppl / p - 1):+.1f}%" for t, b, p in curve if t >= secs) or "slower than every SLEB point"
        print(f"| {m} | {v[0]['tokens']} | {len(v)} | {ppl:.2f} | {mean([r['worst_topic_ppl'] for r in v]):.2f} | {secs:.1f} | {verdict} |")
