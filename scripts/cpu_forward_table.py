#!/usr/bin/env python3
"""Markdown table of scripts/cpu_forward_rounds.sh's runs: per shape and label, the median
tokens/s over the rounds (the rounds in brackets) and each evop label's ratio to PyTorch's median.

  python3 scripts/cpu_forward_table.py OUTDIR
"""
import collections, glob, json, os, statistics, sys

runs = collections.defaultdict(lambda: collections.defaultdict(list))  # label -> (seq, batch) -> [tok/s]
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*-r*.json"))):
    label = os.path.basename(path).rsplit("-r", 1)[0]
    for row in json.load(open(path))["rows"]:
        runs[label][(row["seq"], row["batch"])].append(row["tokens_per_s"])
if "torch" not in runs:
    sys.exit(f"no torch-r*.json in {sys.argv[1]}")
labels = [l for l in sorted(runs) if l != "torch"] + ["torch"]
print("| window x batch | " + " | ".join(f"{l} tok/s" for l in labels) + " | " + " | ".join(f"{l} / torch" for l in labels[:-1]) + " |")
print("|---" * (1 + 2 * len(labels) - 1) + "|")
for shape in sorted(runs["torch"]):
    med = {l: statistics.median(runs[l][shape]) for l in labels if runs[l][shape]}
    cells = [f"{med[l]:.0f} ({', '.join(f'{v:.0f}' for v in runs[l][shape])})" if l in med else "" for l in labels]
    ratios = [f"**{med[l] / med['torch']:.2f}**" if l in med else "" for l in labels[:-1]]
    print(f"| {shape[0]} x {shape[1]} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
