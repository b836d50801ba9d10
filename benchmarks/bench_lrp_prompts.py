"""Issue #17's cost claim on the validation doc's SmolLM2 prompts: AttnLRP, CP-LRP and GIM against
one saliency call (input gradient, one forward + one backward) and against integrated gradients,
side by side in one process, per prompt of ``scripts/make_validation_doc.py``'s ``LM_PROMPTS``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_lrp_prompts [--repeats 5] [--threads 1]

Target: the model's greedy next token (as the validation doc). The methods are interleaved within
each repeat so machine load hits them alike; IG (adaptive, ~50-400 gradient points) runs once per
prompt. Prints JSON: per prompt the median seconds and the ratios, and over prompts the median and
max ratio. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import mechattr as ma

RULES = ["attnlrp", "cp_lrp", "gim"]


def _prompts() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        from make_validation_doc import LM_PROMPTS
    finally:
        sys.path.pop(0)
    return list(LM_PROMPTS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-ig", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = ma.load_model("smollm2-135m")
    prompts = _prompts()
    ma.attribute(model, prompts[0], None, method="saliency", quiet=True)  # warm up
    load0 = os.getloadavg()
    rows = []
    for p in prompts:
        times: dict[str, list[float]] = {m: [] for m in ["saliency", *RULES]}
        for _ in range(max(1, args.repeats)):
            for m in times:
                t0 = time.perf_counter()
                ma.attribute(model, p, None, method=m, quiet=True)
                times[m].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        row = {"prompt": p, "tokens": int(model.to_tokens(p, prepend_bos=False).shape[-1]),
               "seconds": {m: round(v, 4) for m, v in med.items()},
               "x_saliency": {m: round(med[m] / med["saliency"], 3) for m in RULES}}
        if not args.no_ig:
            t0 = time.perf_counter()
            r = ma.attribute(model, p, None, method="integrated_gradients", quiet=True)
            ig = time.perf_counter() - t0
            row["seconds"]["integrated_gradients"] = round(ig, 3)
            row["ig_points"] = r.diagnostics.get("n_forward_points")
            row["x_ig"] = {m: round(med[m] / ig, 4) for m in RULES}
            row["ig_x_saliency"] = round(ig / med["saliency"], 1)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out = {"model": "smollm2-135m", "threads": torch.get_num_threads(), "repeats": args.repeats,
           "loadavg_before": load0, "loadavg_after": os.getloadavg(), "per_prompt": rows,
           "x_saliency_median": {m: round(statistics.median(r["x_saliency"][m] for r in rows), 3) for m in RULES},
           "x_saliency_max": {m: max(r["x_saliency"][m] for r in rows) for m in RULES}}
    if not args.no_ig:
        out["x_ig_median"] = {m: round(statistics.median(r["x_ig"][m] for r in rows), 4) for m in RULES}
        out["ig_x_saliency_median"] = round(statistics.median(r["ig_x_saliency"] for r in rows), 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
