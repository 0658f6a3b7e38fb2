#!/usr/bin/env python3
"""Tables and plots of the equal-compute study (docs/results.md) from the rows of examples/equal_compute.rs.

For every model, device, dtype and n: SLEB's curve (mean over seeds of eval perplexity, worst-topic
perplexity and search seconds at each token budget) and every EvoP configuration, with its ratio to
SLEB at each budget whose mean time is at least EvoP's (EvoP had finished by then: equal or less
compute). Tables go to stdout: the GPU cells first (those of docs/results.md), then the CPU ones.

For the same cells, one SVG each (STEM-nN.svg, beside the first rows file or in --svg DIR; STEM is
the stem the model's rows files share, e.g. equal-smollm2 for equal-smollm2{,-r2}.rows.jsonl and
equal-smollm2-cpu for equal-smollm2-cpu-*.rows.jsonl): evaluation perplexity against search seconds
(log scale); SLEB's curve (mean over seeds per budget, in order of time; each seed's point faint),
each EvoP configuration's mean and per-seed points, and its anytime curves (one thin line per seed:
the eval perplexity of the GA's best mask so far, after each generation, on the GA's own clock).
The y range is set by the final answers; anytime curves above it are clipped.

Files are read in the order of their stems (equal-smollm2 before equal-smollm2-r2), whatever order
they are given in, so a shell glob gives the same output as an explicit list. SLEB rows are taken,
for each model and device, from the first file that has them (one draw of random windows per seed;
later files may hold SLEB rows of another draw, which are left out).

    python3 scripts/equal_compute_table.py docs/results/equal-*.rows.jsonl            # tables, and SVGs in docs/results/
    python3 scripts/equal_compute_table.py --no-svg docs/results/equal-qwen15.rows.jsonl  # tables only
"""
import argparse, json, math, os, statistics, sys
from collections import defaultdict

ROWS_SUFFIX = ".rows.jsonl"
# Blocks of the models the rows name (docs/data.md); the rows do not carry it.
BLOCKS = {"smollm2-135m": 30, "qwen2.5-coder-0.5b": 24, "qwen2.5-coder-1.5b": 28}
# The CUDA rows of 2026-12-04 come from one H200 (they say only "cuda"); the H100 rows of
# 2026-12-07 (*-gpu-portfolio) were marked "cuda:h100" after the run, from the device's reply.
WHERE = {"cuda": "one H200", "cuda:h100": "one H100", "cpu": "CPU"}

mean = lambda xs: statistics.fmean(xs)


def stem(path):
    name = os.path.basename(path)
    return name[: -len(ROWS_SUFFIX)] if name.endswith(ROWS_SUFFIX) else os.path.splitext(name)[0]


def read(paths):
    """Rows of `paths` (in stem order), SLEB's first file per model and device, and the stems of each model's files."""
    rows, sleb_source, stems = [], {}, defaultdict(list)
    for path in sorted(dict.fromkeys(paths), key=lambda p: (stem(p), p)):
        for line in open(path):
            if not line.strip():
                continue
            r = json.loads(line)
            group = (r["model"], r["device"], r["dtype"])
            if stem(path) not in stems[group]:
                stems[group].append(stem(path))
            if r["method"] == "sleb" and sleb_source.setdefault(group, path) != path:
                continue
            rows.append(r)
    return rows, stems


def fmt_tokens(t):
    return f"{t // 1024}k" if t >= 1024 and t % 1024 == 0 else str(t)


def tables(cells):
    for (model, device, dtype, n), methods in cells:
        print(f"\n**{model}, n = {n}** ({dtype}, {WHERE.get(device, device)}; means over seeds)\n")
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


def paired(cells):
    """Each decision-stage portfolio against SLEB given its seconds (`sleb@NAME` rows, same seeds)."""
    for (model, device, dtype, n), methods in cells:
        for m, v in methods.items():
            partner = methods.get(f"sleb@{m}")
            if not m.startswith("portfolio:") or not partner:
                continue
            by_seed = {r["seed"]: r for r in partner}
            pairs = [(r, by_seed[r["seed"]]) for r in sorted(v, key=lambda r: r["seed"]) if r["seed"] in by_seed]
            if not pairs:
                continue
            p, q = mean([a["eval_ppl"] for a, _ in pairs]), mean([b["eval_ppl"] for _, b in pairs])
            ps, qs = mean([a["seconds"] for a, _ in pairs]), mean([b["seconds"] for _, b in pairs])
            seeds = ", ".join(f"{a['eval_ppl']:.2f} vs {b['eval_ppl']:.2f}" for a, b in pairs)
            print(f"| {model} | {n} | {m} | {len(pairs)} | {p:.2f} | {ps:.1f} | {q:.2f} ({mean([b['tokens'] for _, b in pairs]):.0f} tok) | {qs:.1f} | {100 * (p / q - 1):+.1f}% | {seeds} |")


def scored_masks(rows):
    """(removed, eval PPL) of every row and of every decision candidate the rows scored."""
    for r in rows:
        yield r["removed"], r["eval_ppl"]
        for c in (r.get("decision") or {}).get("candidates", []):
            if c.get("eval_ppl") is not None:
                yield c["removed"], c["eval_ppl"]


def headroom(cells, default):
    """How much better than SLEB at equal time any answer could be: the best mask that any row of
    the model, dtype and n scored (every method, seed, GPU and decision candidate with an
    evaluation figure; the same masks score the same on the H100 and the H200 rows) against the
    mean of SLEB given `default`'s seconds (its `sleb@` rows). A configuration can be 3% better
    than SLEB on a cell only where this bound is 3% or more."""
    scored = defaultdict(dict)
    for (model, device, dtype, n), methods in cells:
        masks = scored[(model, dtype, n)]
        for v in methods.values():
            for removed, ppl in scored_masks(v):
                masks[tuple(removed)] = min(masks.get(tuple(removed), math.inf), ppl)
    for (model, device, dtype, n), methods in cells:
        partner = methods.get(f"sleb@{default}")
        if not partner:
            continue
        best, ppl = min(scored[(model, dtype, n)].items(), key=lambda kv: kv[1])
        q = mean([r["eval_ppl"] for r in partner])
        print(f"| {model} | {n} | {q:.2f} | {ppl:.2f} | {100 * (ppl / q - 1):+.1f}% | {len(scored[(model, dtype, n)])} | {list(best)} |")


def replays(cells, partner):
    """Decisions replayed on the CPU (`replay:CONFIG` rows: the candidates of a GPU run decided
    again with CONFIG's decision windows) against SLEB given `partner`'s seconds on the GPU. Each
    pick is given the evaluation figure of the GPU rows (same model, device and dtype as SLEB's)
    where any of them scored that mask, else the replay's own CPU f32 figure, marked `*` (the
    same mask scores 0.1-0.3% apart in f32 and bf16)."""
    gpu_scored = defaultdict(dict)
    for (model, device, dtype, n), methods in cells:
        if device == "cpu":
            continue
        for v in methods.values():
            for removed, ppl in scored_masks(v):
                gpu_scored[(model, device, dtype, n)][tuple(removed)] = ppl
    for (model, device, dtype, n), methods in cells:
        for m, v in methods.items():
            if not m.startswith("replay:"):
                continue
            for (gmodel, gdevice, gdtype, gn), gmethods in cells:
                sleb = gmethods.get(f"sleb@{partner}")
                if (gmodel, gn) != (model, n) or gdevice == "cpu" or not sleb:
                    continue
                by_seed = {r["seed"]: r for r in sleb}
                picks, marks = [], []
                for r in sorted(v, key=lambda r: r["seed"]):
                    known = gpu_scored[(gmodel, gdevice, gdtype, gn)].get(tuple(r["removed"]))
                    picks.append(known if known is not None else r["eval_ppl"])
                    marks.append("" if known is not None else "*")
                seeds = [r["seed"] for r in sorted(v, key=lambda r: r["seed"])]
                q = mean([by_seed[s]["eval_ppl"] for s in seeds if s in by_seed])
                p = mean(picks)
                per = ", ".join(f"{x:.2f}{k} vs {by_seed[s]['eval_ppl']:.2f}" for x, k, s in zip(picks, marks, seeds) if s in by_seed)
                print(f"| {model} | {n} | {m} | {len(picks)} | {p:.2f} | {q:.2f} | {100 * (p / q - 1):+.1f}% | {per} |")


# ---- plots (plain SVG, no dependency; the look of examples/budget_plots.rs) ----

W, H = 1000, 550
PLOT = (78, 52, 640, 440)  # left, top, right, bottom of the plotting area
LEGEND_X = 662
FONT = "sans-serif"
SLEB_COLOR = "#000000"
# Tableau 10 without its grey: distinct on white, also in print.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
SHAPES = ["square", "triangle", "diamond", "down", "pentagon", "hexagon", "star", "plus", "cross"]


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def f2(x):
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.0f}"


def marker(shape, x, y, r, attrs):
    """An SVG element for a marker of `shape` centred on (x, y), about 2r across."""
    if shape == "circle":
        return f'<circle cx="{f2(x)}" cy="{f2(y)}" r="{f2(r)}" {attrs}/>'
    if shape == "square":
        s = r * 0.9
        return f'<rect x="{f2(x - s)}" y="{f2(y - s)}" width="{f2(2 * s)}" height="{f2(2 * s)}" {attrs}/>'
    polar = {
        "triangle": [(r * 1.2, a) for a in (-90, 30, 150)],
        "down": [(r * 1.2, a) for a in (90, 210, 330)],
        "diamond": [(r * 1.2, a) for a in (-90, 0, 90, 180)],
        "pentagon": [(r * 1.05, -90 + 72 * i) for i in range(5)],
        "hexagon": [(r * 1.05, 60 * i) for i in range(6)],
        "star": [(r * (1.3 if i % 2 == 0 else 0.55), -90 + 36 * i) for i in range(10)],
        "plus": [(r * (1.2 if i % 3 == 0 else 0.6), -90 + 30 * i + (0 if i % 3 == 0 else (-15 if i % 3 == 1 else 15))) for i in range(12)],
        "cross": [(r * (1.2 if i % 3 == 0 else 0.6), -45 + 30 * i + (0 if i % 3 == 0 else (-15 if i % 3 == 1 else 15))) for i in range(12)],
    }[shape]
    pts = " ".join(f"{f2(x + d * math.cos(math.radians(a)))},{f2(y + d * math.sin(math.radians(a)))}" for d, a in polar)
    return f'<polygon points="{pts}" {attrs}/>'


def nice_log_bounds(lo, hi):
    steps = [m * 10.0**e for e in range(-4, 7) for m in (1, 2, 5)]
    return max(s for s in steps if s <= lo * 0.9), min(s for s in steps if s >= hi * 1.08)


def nice_step(span, count=6):
    raw = span / count
    e = 10.0 ** math.floor(math.log10(raw))
    return next(m * e for m in (1, 2, 2.5, 5, 10) if m * e >= raw)


def plot(path, model, device, dtype, n, methods):
    sleb = {int(k.split(':')[1]): v for k, v in methods.items() if k.startswith("sleb:")}
    configs = [(m, v) for m, v in methods.items() if not m.startswith("sleb:")]
    finals = [r for v in methods.values() for r in v]
    # Anytime points whose mask was not scored (null) are left out.
    anytime = [p for _, v in configs for r in v for p in r["anytime"] if p[1] is not None]
    # x: every time drawn; y: the final answers (and anytime's lowest value), anytime clipped above.
    xs = [r["seconds"] for r in finals] + [t for t, _ in anytime]
    xmin, xmax = nice_log_bounds(min(xs), max(xs))
    ppl = [r["eval_ppl"] for r in finals]
    lo, hi = min(ppl + [p for _, p in anytime]), max(ppl)
    span = max(hi - lo, 0.04 * hi)
    ymin, ymax = lo - 0.08 * span, hi + 0.22 * span
    left, top, right, bottom = PLOT
    X = lambda t: left + (math.log10(t) - math.log10(xmin)) / (math.log10(xmax) - math.log10(xmin)) * (right - left)
    Y = lambda p: bottom - (p - ymin) / (ymax - ymin) * (bottom - top)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">',
        f'<rect x="0" y="0" width="{W}" height="{H}" fill="#ffffff"/>',
        f'<defs><clipPath id="plot"><rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}"/></clipPath></defs>',
    ]
    text = lambda x, y, s, size=13, anchor="middle", extra="": out.append(
        f'<text x="{f2(x)}" y="{f2(y)}" font-family="{FONT}" font-size="{size}" text-anchor="{anchor}"{extra}>{esc(s)}</text>')
    where = f"{device}, {dtype}"
    blocks = f" of {BLOCKS[model]} blocks" if model in BLOCKS else ""
    text(W / 2, 28, f"{model}, n = {n}{blocks} ({where})", size=18)
    # Grid and axes: decades of 1, 2, 5 labelled, the other integers faint.
    e0, e1 = math.floor(math.log10(xmin)), math.ceil(math.log10(xmax))
    for e in range(e0, e1 + 1):
        for k in range(1, 10):
            t = k * 10.0**e
            if t < xmin * (1 - 1e-9) or t > xmax * (1 + 1e-9):
                continue
            x = X(t)
            major = k in (1, 2, 5)
            out.append(f'<line x1="{f2(x)}" y1="{top}" x2="{f2(x)}" y2="{bottom}" stroke="#000000" stroke-opacity="{0.12 if major else 0.05}" stroke-width="1"/>')
            if major:
                out.append(f'<line x1="{f2(x)}" y1="{bottom}" x2="{f2(x)}" y2="{bottom + 5}" stroke="#000000"/>')
                text(x, bottom + 20, f"{t:g}")
    step = nice_step(ymax - ymin)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if step / 10.0 ** math.floor(math.log10(step)) == 2.5 else 0)
    y = math.ceil(ymin / step) * step
    while y <= ymax:
        out.append(f'<line x1="{left}" y1="{f2(Y(y))}" x2="{right}" y2="{f2(Y(y))}" stroke="#000000" stroke-opacity="0.12" stroke-width="1"/>')
        out.append(f'<line x1="{left - 5}" y1="{f2(Y(y))}" x2="{left}" y2="{f2(Y(y))}" stroke="#000000"/>')
        text(left - 8, Y(y) + 4.5, f"{y:.{decimals}f}", anchor="end")
        y += step
    text((left + right) / 2, bottom + 42, "search seconds (log scale): calibration windows to mask", size=14)
    text(22, (top + bottom) / 2, "evaluation perplexity", size=14, extra=f' transform="rotate(-90 22 {f2((top + bottom) / 2)})"')
    # Data, clipped to the plotting area.
    out.append('<g clip-path="url(#plot)">')
    styles = [(PALETTE[i % len(PALETTE)], SHAPES[i % len(SHAPES)]) for i in range(len(configs))]
    for (m, v), (color, _) in zip(configs, styles):
        for r in sorted(v, key=lambda r: r["seed"]):
            pts, last = [], None
            for t, p in (q for q in r["anytime"] if q[1] is not None):
                if last is not None:
                    pts.append((t, last))
                pts.append((t, p))
                last = p
            if len(pts) >= 2:
                d = " ".join(f"{f2(X(t))},{f2(Y(p))}" for t, p in pts)
                out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-opacity="0.45" stroke-width="1"/>')
    for b in sorted(sleb):
        for r in sorted(sleb[b], key=lambda r: r["seed"]):
            out.append(marker("circle", X(r["seconds"]), Y(r["eval_ppl"]), 3, f'fill="{SLEB_COLOR}" fill-opacity="0.25"'))
    for (m, v), (color, shape) in zip(configs, styles):
        for r in sorted(v, key=lambda r: r["seed"]):
            out.append(marker(shape, X(r["seconds"]), Y(r["eval_ppl"]), 3.2, f'fill="{color}" fill-opacity="0.35"'))
    curve = sorted((mean([r["seconds"] for r in v]), mean([r["eval_ppl"] for r in v]), b) for b, v in sleb.items())
    if len(curve) >= 2:
        d = " ".join(f"{f2(X(t))},{f2(Y(p))}" for t, p, _ in curve)
        out.append(f'<polyline points="{d}" fill="none" stroke="{SLEB_COLOR}" stroke-width="2"/>')
    for t, p, b in curve:
        out.append(marker("circle", X(t), Y(p), 5, f'fill="{SLEB_COLOR}" stroke="#ffffff" stroke-width="1"'))
        text(X(t), Y(p) + 18 if Y(p) + 18 < bottom - 3 else Y(p) - 10, fmt_tokens(b), size=11)
    for (m, v), (color, shape) in zip(configs, styles):
        t, p = mean([r["seconds"] for r in v]), mean([r["eval_ppl"] for r in v])
        out.append(marker(shape, X(t), Y(p), 6, f'fill="{color}" stroke="#ffffff" stroke-width="1"'))
    out.append("</g>")
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#000000"/>')
    # Legend, right of the plot.
    seeds = sorted({r["seed"] for r in finals})
    y = top + 6
    out.append(f'<rect x="{LEGEND_X - 8}" y="{top}" width="{W - LEGEND_X}" height="{22 * (len(configs) + 4) + 22}" fill="#ffffff" stroke="#000000"/>')

    def entry(sample, label, size=12):
        nonlocal y
        y += 22
        out.extend(sample(LEGEND_X + 14, y - 4))
        text(LEGEND_X + 36, y, label, size=size, anchor="start")

    budgets = ", ".join(fmt_tokens(b) for b in sorted(sleb))
    entry(lambda x, y: [f'<line x1="{x - 12}" y1="{y}" x2="{x + 12}" y2="{y}" stroke="{SLEB_COLOR}" stroke-width="2"/>',
                        marker("circle", x, y, 5, f'fill="{SLEB_COLOR}" stroke="#ffffff" stroke-width="1"')],
          f"SLEB, {budgets} tokens" if sleb else "SLEB: no rows")
    for (m, v), (color, shape) in zip(configs, styles):
        entry(lambda x, y, c=color, s=shape: [f'<line x1="{x - 12}" y1="{y}" x2="{x + 12}" y2="{y}" stroke="{c}" stroke-opacity="0.45" stroke-width="1"/>',
                                              marker(s, x, y, 6, f'fill="{c}" stroke="#ffffff" stroke-width="1"')],
              f"{m}, {fmt_tokens(v[0]['tokens'])} tokens")
    grey = "#555555"
    y += 8
    entry(lambda x, y: [marker("circle", x, y, 5, f'fill="{grey}"')], f"mean over seeds {', '.join(map(str, seeds))}", size=11)
    entry(lambda x, y: [marker("circle", x, y, 3, f'fill="{grey}" fill-opacity="0.35"')], "one seed's answer", size=11)
    entry(lambda x, y: [f'<line x1="{x - 12}" y1="{y}" x2="{x + 12}" y2="{y}" stroke="{grey}" stroke-opacity="0.6" stroke-width="1"/>'],
          "anytime curve, one per seed", size=11)
    notes = [
        "Thin lines: eval perplexity of the GA's best mask so far (by its own objective) after each generation, clipped",
        "above the frame. Their clock is the GA's: it leaves out a multi-fidelity configuration's greedy seed (before",
        "the GA) and its finalists' decision (after), both inside that configuration's search seconds.",
    ]
    for i, s in enumerate(notes):
        text(left, bottom + 68 + 15 * i, s, size=11, anchor="start", extra=f' fill="{grey}"')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rows", nargs="+", help="rows files of examples/equal_compute.rs (STEM.rows.jsonl)")
    ap.add_argument("--svg", metavar="DIR", help="folder of the SVGs (default: that of the first rows file)")
    ap.add_argument("--no-svg", action="store_true", help="tables only")
    ap.add_argument("--replay-partner", metavar="CONFIG", help="also the table of replayed decisions (replay:... rows) against SLEB given CONFIG's seconds")
    ap.add_argument("--headroom", metavar="CONFIG", help="also the headroom table: the best mask scored on each cell against SLEB given CONFIG's seconds")
    args = ap.parse_args()
    rows, stems = read(args.rows)
    cells = defaultdict(lambda: defaultdict(list))
    for r in rows:
        key = r["method"] if r["method"] != "sleb" else f"sleb:{r['tokens']}"
        cells[(r["model"], r["device"], r["dtype"], r["n"])][key].append(r)
    # GPU cells first (the tables of docs/results.md), then the rest.
    cells = sorted(cells.items(), key=lambda c: (c[0][1] != "cuda", c[0]))
    tables(cells)
    if any(m.startswith("portfolio:") for _, methods in cells for m in methods):
        print("\n**The decision-stage portfolio against SLEB given the same seconds** (means over seeds; per seed: portfolio vs SLEB)\n")
        print("| model | n | configuration | seeds | eval PPL | s | SLEB at equal time | s | vs SLEB | per seed |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
        paired(cells)
    if args.headroom:
        print(f"\n**Headroom: the best mask any row scored, against SLEB given the seconds of {args.headroom}** (SLEB: mean over seeds)\n")
        print("| model | n | SLEB at equal time | best mask scored | best vs SLEB | masks scored | best mask |")
        print("|---|---:|---:|---:|---:|---:|---|")
        headroom(cells, args.headroom)
    if args.replay_partner and any(m.startswith("replay:") for _, methods in cells for m in methods):
        print(f"\n**Decisions replayed on the CPU against SLEB given the seconds of {args.replay_partner} on the GPU** (means over seeds)\n")
        print("| model | n | replayed decision | seeds | eval PPL | SLEB at equal time | vs SLEB | per seed |")
        print("|---|---:|---|---:|---:|---:|---:|---|")
        replays(cells, args.replay_partner)
    if args.no_svg:
        return
    folder = args.svg or os.path.dirname(sorted(args.rows, key=lambda p: (stem(p), p))[0])
    os.makedirs(folder or ".", exist_ok=True)
    # A group's SVG stem: the dash-separated words its files' stems share (equal-smollm2-cpu-*: equal-smollm2-cpu).
    names = {}
    for group, ss in sorted(stems.items()):
        words = [s.split("-") for s in ss]
        common = []
        for ws in zip(*words):
            if len(set(ws)) > 1:
                break
            common.append(ws[0])
        names[group] = "-".join(common) or "equal"
    if len(set(names.values())) < len(names):  # files that mix models or devices: say which in the name
        names = {g: f"{s}-{g[0]}-{g[1]}-{g[2]}" for g, s in names.items()}
    for (model, device, dtype, n), methods in cells:
        path = os.path.join(folder, f"{names[(model, device, dtype)]}-n{n}.svg")
        plot(path, model, device, dtype, n, methods)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
