#!/usr/bin/env python3
"""Markdown tables of healing rows (examples/heal_study.rs, docs/results/heal-*.rows.jsonl).

For every model, heal corpus and mask: each configuration's perplexity on the evaluation split (whole,
pooled over the per-topic windows), on each out-of-domain text and on the tuning windows, and the share
of the log-perplexity gap it closes, (ln ppl_unhealed - ln ppl_healed) / (ln ppl_unhealed - ln ppl_dense);
the worst topic's change in percent (positive = worse), runs patched and heal seconds.

  python3 scripts/heal_table.py docs/results/heal-*.rows.jsonl [--configs none,linear]
  python3 scripts/heal_table.py docs/results/heal-*.rows.jsonl --summary linear:share=0.5

--summary CONFIG prints instead one row per model and mask for that configuration (seed 0, any heal
corpus): the gap closed on the evaluation split and on each out-of-domain text, whether every topic
and text improved, and the averages over each model's two smallest masks (the 20% and 30% cells).
"""
import argparse
import json
import math
from collections import OrderedDict


def closed(dense, pruned, healed):
    if None in (dense, pruned, healed) or pruned <= dense:
        return None
    return (math.log(pruned) - math.log(healed)) / (math.log(pruned) - math.log(dense))


def fmt(x, d=2):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--configs", default=None, help="only these configurations (comma-separated)")
    ap.add_argument("--summary", default=None, help="one configuration's closed shares per model and mask, with averages")
    args = ap.parse_args()
    rows = [json.loads(l) for f in args.files for l in open(f) if l.strip()]
    if args.summary:
        return summary(rows, args.summary)
    keep = args.configs.split(",") if args.configs else None
    groups = OrderedDict()
    for r in rows:
        groups.setdefault((r["model"], r.get("heal_corpus")), []).append(r)
    for (model, corpus), rs in groups.items():
        dense = next((r for r in rs if not r["removed"]), None)
        if dense is None:
            dense = next((r for r in rows if r["model"] == model and not r["removed"]), None)
        oods = sorted({k for r in rs for k in r.get("ood", {})})
        print(f"\n### {model}" + (f", healer pool + {corpus.split('/')[-1]}" if corpus else ", healer pool: Wikipedia calibration split"))
        if dense:
            print(f"dense: eval {fmt(dense.get('eval_ppl'))}, " + ", ".join(f"{k} {fmt(dense['ood'].get(k))}" for k in oods)
                  + (f", tune {fmt(dense.get('tune_ppl'))}" if dense.get("tune_ppl") else ""))
        head = ["removed", "config", "eval PPL", "closed"] + [x for k in oods for x in (k, "closed")] + ["tune PPL", "closed", "worst topic", "patched", "heal s"]
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        masks = OrderedDict()
        for r in rs:
            if r["removed"]:
                masks.setdefault(tuple(r["removed"]), []).append(r)
        for removed, mr in masks.items():
            # The unhealed row does not depend on the healer's pool: any of the model's will do.
            base = next((r for r in rows if r["model"] == model and tuple(r["removed"]) == removed and r["config"] == "none"), None)
            for r in mr:
                if keep and r["config"] not in keep:
                    continue
                cells = [compact(removed), r["config"] + (f" s{r['seed']}" if r["seed"] else ""), fmt(r.get("eval_ppl"))]
                healed = r["config"] != "none" and base is not None and dense is not None
                cells.append(pct(closed(dense.get("eval_ppl"), base.get("eval_ppl"), r.get("eval_ppl"))) if healed else "-")
                for k in oods:
                    cells.append(fmt(r["ood"].get(k)))
                    cells.append(pct(closed(dense["ood"].get(k), base["ood"].get(k), r["ood"].get(k))) if healed else "-")
                cells.append(fmt(r.get("tune_ppl")))
                cells.append(pct(closed(dense.get("tune_ppl"), base.get("tune_ppl"), r.get("tune_ppl"))) if healed and r.get("tune_ppl") else "-")
                if healed and r.get("topics") and base.get("topics"):
                    worst = max((r["topics"][t] / base["topics"][t] - 1, t) for t in r["topics"] if t in base["topics"])
                    cells.append(f"{100 * worst[0]:+.1f}% ({worst[1]})")
                else:
                    cells.append("-")
                cells.append(f"{r['patched_runs']}/{len(r['runs'])}" if r["runs"] else "-")
                cells.append(fmt(r.get("heal_seconds"), 1) if healed else "-")
                print("| " + " | ".join(cells) + " |")


def summary(rows, config):
    """Closed shares of `config` (seed 0) per model and mask; averages over each model's two smallest masks."""
    models = OrderedDict()
    for r in rows:
        models.setdefault(r["model"], [])
    oods = sorted({k for r in rows for k in r.get("ood", {})})
    head = ["model", "removed", "eval split"] + oods + ["every topic and text better"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 2 + "---:|" * (1 + len(oods)) + "---|")
    eval_cells, ood_cells = [], []
    for model in models:
        dense = next((r for r in rows if r["model"] == model and not r["removed"]), None)
        # Rows of the healer's default pool (with a heal corpus) where the model has them.
        healed = [r for r in rows if r["model"] == model and r["config"] == config and r["seed"] == 0 and r["removed"]]
        if any(r.get("heal_corpus") for r in healed):
            healed = [r for r in healed if r.get("heal_corpus")]
        healed.sort(key=lambda r: len(r["removed"]))
        for rank, r in enumerate(healed):
            base = next((b for b in rows if b["model"] == model and b["removed"] == r["removed"] and b["config"] == "none"), None)
            if base is None or dense is None:
                continue
            e = closed(dense.get("eval_ppl"), base.get("eval_ppl"), r.get("eval_ppl"))
            o = [closed(dense["ood"].get(k), base["ood"].get(k), r["ood"].get(k)) for k in oods]
            better = all(r["topics"][t] < base["topics"][t] for t in r.get("topics", {}) if t in base.get("topics", {}))
            better = better and all(r["ood"][k] < base["ood"][k] for k in oods if k in r["ood"] and k in base["ood"])
            if rank < 2:
                if e is not None:
                    eval_cells.append(e)
                ood_cells.extend(x for x in o if x is not None)
            print(f"| {model} | {compact(r['removed'])} | {pct(e)} | " + " | ".join(pct(x) for x in o) + f" | {'yes' if better else 'NO'} |")
    if eval_cells or ood_cells:
        mean = lambda xs: pct(sum(xs) / len(xs)) if xs else "-"
        print(f"\n{config}: mean over the two smallest masks of each model: evaluation split {mean(eval_cells)} "
              f"({len(eval_cells)} cells), out of domain {mean(ood_cells)} ({len(ood_cells)} cells)")


def pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def compact(removed):
    out, start = [], None
    for i, b in enumerate(removed):
        if start is None:
            start = b
        if i + 1 == len(removed) or removed[i + 1] != b + 1:
            out.append(str(start) if start == b else f"{start}..{b}")
            start = None
    return "[" + ", ".join(out) + "]"


if __name__ == "__main__":
    main()
