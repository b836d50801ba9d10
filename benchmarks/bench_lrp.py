"""Rule-based backward passes (attnlrp, cp_lrp, gim) on SmolLM2-135M: time against one saliency
call and against integrated gradients, side by side in one process, plus the top tokens and the
deletion (perturbation) and ablation verdicts of ``ma.validate``.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_lrp [--repeats 5] [--no-validate]

Prints a JSON summary. Speed is measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mechattr as ma

TEXT, TARGET = "The capital of France is", " Paris"
METHODS = ["saliency", "attnlrp", "cp_lrp", "gim", "integrated_gradients"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-validate", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = ma.load_model(args.model)
    ma.attribute(model, TEXT, TARGET, method="saliency", quiet=True)  # warm up
    out: dict = {"model": args.model, "text": TEXT, "target": TARGET, "threads": torch.get_num_threads(),
                 "seconds": {}, "top_tokens": {}}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    results = {}
    for _ in range(args.repeats if args.repeats > 0 else 1):
        for m in METHODS:  # interleaved, so load on the machine hits every method alike
            if m == "integrated_gradients" and len(times[m]) >= 1:
                continue  # IG is ~50-400x slower: once is enough for the ratio
            t0 = time.perf_counter()
            results[m] = ma.attribute(model, TEXT, TARGET, method=m, quiet=True)
            times[m].append(time.perf_counter() - t0)
    sal = statistics.median(times["saliency"])
    for m in METHODS:
        med = statistics.median(times[m])
        out["seconds"][m] = {"median": round(med, 4), "runs": len(times[m]), "x_saliency": round(med / sal, 2)}
        out["top_tokens"][m] = [(t, round(s, 4)) for _, t, s in results[m].top_k(3)]
    ig = statistics.median(times["integrated_gradients"])
    for m in ("attnlrp", "cp_lrp", "gim"):
        out["seconds"][m]["x_ig"] = round(statistics.median(times[m]) / ig, 4)
        out.setdefault("conservation_relative_error_input", {})[m] = results[m].diagnostics[
            "conservation_relative_error_input"]
    if not args.no_validate:
        t0 = time.perf_counter()
        rep = ma.validate(model, [TEXT], TARGET, methods=["attnlrp", "cp_lrp", "gim", "integrated_gradients"],
                          checks=["perturbation", "ablation"], quiet=True)
        out["validate_seconds"] = round(time.perf_counter() - t0, 1)
        out["validate"] = str(rep)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
