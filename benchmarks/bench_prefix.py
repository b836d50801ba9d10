"""Prefix reuse for perturbation methods: speed-up over the plain batched computation.

    python -m benchmarks.bench_prefix                                  # tiny GPT-2 and GPT-2-small shape, 20 and 320 tokens
    python -m benchmarks.bench_prefix --models smollm2-135m --tokens 20 --methods occlusion

Each case runs the same mechattr call with ``MECHATTR_PREFIX_REUSE`` on and off (and on with
packing off, ``MECHATTR_PREFIX_PACK=0``: groups only) in one process, interleaved over ``--rounds``
rounds after one warm-up each, and reports the median times, the medians of the per-round ratios, the fraction of token rows the reuse actually ran (from the call's diagnostics) and the
max |difference| of the scores. The 5-minute load average is printed with the table: on a shared
machine the times are noisy; the work fraction is not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

METHODS = {
    "occlusion": {},
    "kernel_shap": {"n_samples": 200},
    "lime": {"n_samples": 200},
    "shapley_sampling": {"n_permutations": 4},
}


def load(name: str, device: str = "cpu") -> Any:
    import mechattr as ma

    if name == "gpt2-small-shape":
        from benchmarks.run import model_dir

        return ma.load_model(str(model_dir()), kind="bridge", device=device)
    return ma.load_model(name, kind="bridge", device=device)


def prompt_ids(model: Any, n: int) -> Any:
    import mechattr as ma
    from benchmarks.run import TEXT

    import torch

    a = ma.as_adapter(model)
    raw = a.tokenizer(TEXT * (1 + n // 40), add_special_tokens=False)["input_ids"]
    ids = torch.tensor(([a.tokenizer.bos_token_id] if a.prepend_bos else []) + raw)
    if ids.numel() < n:
        raise SystemExit(f"the text gives only {ids.numel()} tokens")
    return ids[:n]


def timed(model: Any, ids: Any, method: str, reuse: bool, kw: dict[str, Any], pack: bool = True) -> tuple[float, Any]:
    import mechattr as ma

    os.environ["MECHATTR_PREFIX_REUSE"] = "1" if reuse else "0"
    os.environ["MECHATTR_PREFIX_PACK"] = "1" if pack else "0"
    t0 = time.perf_counter()
    out = ma.attribute(model, ids, method=method, quiet=True, **kw)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-gpt2,gpt2-small-shape")
    ap.add_argument("--tokens", default="20,320")
    ap.add_argument("--methods", default="occlusion,kernel_shap,lime")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up (0: time the warm-up call, for long cases)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"load average (1, 5, 15 min): {os.getloadavg()}; torch threads {torch.get_num_threads()}")
    print("| model | tokens | method | plain s | reuse s | reuse / plain | token rows run | max abs diff "
          "| groups only s | groups / plain | groups' token rows |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mname in args.models.split(","):
        model = load(mname, args.device)
        for n in (int(t) for t in args.tokens.split(",")):
            ids = prompt_ids(model, n).to(args.device)
            for method in args.methods.split(","):
                kw = METHODS[method]
                # modes: plain (no reuse), reuse (packing allowed: the default), groups (packing off)
                modes = {"plain": (False, True), "reuse": (True, True), "groups": (True, False)}
                times: dict[str, list[float]] = {m: [] for m in modes}
                outs = {}
                for m, (reuse, pack) in modes.items():  # warm-up (the measurement itself with --rounds 0)
                    t, outs[m] = timed(model, ids, method, reuse, kw, pack)
                    if args.rounds == 0:
                        times[m].append(t)
                for r in range(args.rounds):
                    for m in (list(modes) if r % 2 == 0 else list(modes)[::-1]):
                        t, _ = timed(model, ids, method, modes[m][0], kw, modes[m][1])
                        times[m].append(t)
                med = {m: statistics.median(v) for m, v in times.items()}
                ratio = {m: statistics.median(x / y for x, y in zip(times[m], times["plain"])) for m in modes}

                def frac(m: str) -> str:
                    d = outs[m].diagnostics.get("prefix_reuse", {})
                    f = d.get("work_fraction")
                    return f"n/a ({d.get('fallback', '?')})" if f is None else f"{f:.2f}" + (" packed" if d.get("packed_forwards") else "")

                diff = max(float((outs[m].scores - outs["plain"].scores).abs().max()) for m in ("reuse", "groups"))
                print(f"| {mname} | {n} | {method} | {med['plain']:.3f} | {med['reuse']:.3f} | {ratio['reuse']:.2f} | "
                      f"{frac('reuse')} | {diff:.1e} | {med['groups']:.3f} | {ratio['groups']:.2f} | {frac('groups')} |",
                      flush=True)
    os.environ.pop("MECHATTR_PREFIX_REUSE", None)
    os.environ.pop("MECHATTR_PREFIX_PACK", None)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
