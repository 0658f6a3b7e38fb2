#!/usr/bin/env bash
# Scaling model of the distributed EvoP search (docs/distributed.md): the time of a GA generation
# on N ranks is the makespan of its new candidates under the work queue's schedule (longest task
# first, then whoever is free), plus a per-task message overhead; a job adds the model load and
# evaluator setup, paid by every rank in parallel (or limited by a shared file system's bandwidth).
#
# A candidate's cost is proportional to the blocks it runs: the kept blocks from its first removed
# block on (the evaluator starts there from the cached dense state) plus the LM head in block
# equivalents; costs are scaled so that the mean candidate takes --tc seconds (measure it with
# examples/mpi_scaling.rs: "per_candidate_busy_seconds"). Masks are drawn uniformly (seeded), as
# the GA's offspring and immigrants spread over the space; the memo cache and the prefix cache are
# ignored (both help one process more than N).
#
# Usage: scripts/mpi_model.sh [--tc S] [--blocks L] [--remove n] [--head H] [--population P,...]
#          [--generations G] [--load S] [--model-gb GB] [--fs-gbps W] [--overhead S] [--ranks N,...]
set -euo pipefail
exec python3 - "$@" <<'EOF'
import argparse, math, random

p = argparse.ArgumentParser(prog="mpi_model.sh")
p.add_argument("--tc", type=float, default=1.0, help="mean seconds per candidate on one GPU")
p.add_argument("--blocks", type=int, default=32)
p.add_argument("--remove", type=int, default=8)
p.add_argument("--head", type=float, default=0.65, help="LM head cost in block equivalents (7B: 4096x32000 vs a block's 202M weights)")
p.add_argument("--population", default="32,64,128,256", help="GA populations; each generation evaluates population - 2 elites")
p.add_argument("--generations", type=int, default=50)
p.add_argument("--load", type=float, default=60.0, help="seconds to load the model and build the evaluator on one rank")
p.add_argument("--model-gb", type=float, default=13.5, help="model size read by every rank (7B bf16: 13.5)")
p.add_argument("--fs-gbps", type=float, default=0.0, help="shared file system bandwidth in GB/s (0: every rank reads a local copy)")
p.add_argument("--overhead", type=float, default=0.0005, help="seconds of messaging and polling per task")
p.add_argument("--ranks", default="1,2,4,8,16,32,64")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
rng = random.Random(a.seed)
free = list(range(1, a.blocks - 1))

def weight():
    removed = sorted(rng.sample(free, a.remove))
    first = removed[0]
    kept_after = sum(1 for i in range(first, a.blocks) if i not in removed)
    return kept_after + a.head

sample = [weight() for _ in range(20000)]
mean = sum(sample) / len(sample)

def generation_time(costs, n):
    # The queue: tasks in decreasing cost, each to the evaluator that frees up first.
    free_at = [0.0] * n
    for c in sorted(costs, reverse=True):
        k = min(range(n), key=free_at.__getitem__)
        free_at[k] += c + a.overhead
    return max(free_at)

ranks = [int(x) for x in a.ranks.split(",")]
print(f"mean candidate {a.tc:.3f} s (cost spread min/mean/max = {min(sample)/mean:.2f}/1.00/{max(sample)/mean:.2f}), "
      f"{a.generations} generations, load+setup {a.load:.0f} s per rank"
      + (f", {a.model_gb} GB per rank over a {a.fs_gbps} GB/s shared file system" if a.fs_gbps else ", local model copies"))
print()
print("| population | " + " | ".join(f"N={n}" for n in ranks) + " |")
print("|---:|" + "---:|" * len(ranks))
for pop in [int(x) for x in a.population.split(",")]:
    b = max(pop - 2, 1)
    gens = [[weight() / mean * a.tc for _ in range(b)] for _ in range(a.generations)]
    base = None
    cells = []
    for n in ranks:
        load = max(a.load, n * a.model_gb / a.fs_gbps) if a.fs_gbps else a.load
        total = load + sum(generation_time(g, n) for g in gens)
        base = base or total
        search = sum(generation_time(g, n) for g in gens)
        search1 = sum(generation_time(g, 1) for g in gens)
        cells.append(f"{base / total:.1f}x ({search1 / (n * search):.0%}, {total / 60:.1f} min)")
    print(f"| {pop} | " + " | ".join(cells) + " |")
print()
print("cells: whole-job speedup over 1 rank (search-phase efficiency, job minutes)")
EOF
