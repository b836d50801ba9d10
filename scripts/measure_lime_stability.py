"""LIME's rank agreement with exact Shapley values on the zoo, across seeds and sample counts.

For each zoo task, prompt and seed: Spearman rho between LIME's token scores and the exact
Shapley values (method="shapley", same replacement), over the attributed (non-BOS) tokens.
Prints, per n_samples: the mean rho over prompts and seeds, and the mean over prompts of the
standard deviation of rho across seeds (the seed-to-seed instability).

    OMP_NUM_THREADS=1 python scripts/measure_lime_stability.py --n-prompts 8 --seeds 5
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scipy.stats import spearmanr

import mechattr as ma
from mechattr import zoo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="agreement,recall")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--samples", default="100,200,500,1000,2000,5000")
    ap.add_argument("--feature-selection", default="none")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    counts = [int(c) for c in args.samples.split(",")]
    out: dict = {}
    for task in args.tasks.split(","):
        model = ma.load_model(f"zoo:{task}")
        exs = zoo.get_task(task).examples(args.n_prompts, seed=0)
        rho = np.zeros((len(counts), len(exs), args.seeds))
        for e, ex in enumerate(exs):
            target = " " + ex.answer
            sh = ma.attribute(model, ex.prompt, target, method="shapley", quiet=True).token_scores().numpy()
            free = np.arange(1, sh.shape[-1])  # BOS is fixed (score 0)
            for c, n in enumerate(counts):
                for s in range(args.seeds):
                    li = ma.attribute(
                        model, ex.prompt, target, method="lime", n_samples=n, seed=s, quiet=True,
                        feature_selection=args.feature_selection,
                    ).token_scores().numpy()
                    rho[c, e, s] = spearmanr(li[free], sh[free]).statistic
        out[task] = {
            str(n): {"mean_rho": float(np.nanmean(rho[c])), "seed_std": float(np.nanmean(rho[c].std(-1))),
                     "min_rho": float(np.nanmin(rho[c]))}
            for c, n in enumerate(counts)
        }
        for n in counts:
            r = out[task][str(n)]
            print(f"{task:10s} n_samples={n:5d} mean rho={r['mean_rho']:.3f} seed std={r['seed_std']:.3f} min={r['min_rho']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
