"""Prefix reuse for perturbation methods: speed-up over the plain batched computation.

    python -m benchmarks.bench_prefix                                  # tiny GPT-2 and GPT-2-small shape, 20 and 320 tokens
    python -m benchmarks.bench_prefix --models smollm2-135m --tokens 20 --methods occlusion

Each case runs the same mechattr call with ``MECHATTR_PREFIX_REUSE`` on and off in one process,
interleaved over ``--rounds`` rounds after one warm-up each, and reports the median times, their
ratio, the fraction of token rows the reuse actually ran (from the call's diagnostics) and the
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


def timed(model: Any, ids: Any, method: str, reuse: bool, kw: dict[str, Any]) -> tuple[float, Any]:
    import mechattr as ma

    os.environ["MECHATTR_PREFIX_REUSE"] = "1" if reuse else "0"
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
    print("| model | tokens | method | plain s | reuse s | reuse / plain | token rows run | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for mname in args.models.split(","):
        model = load(mname, args.device)
        for n in (int(t) for t in args.tokens.split(",")):
            ids = prompt_ids(model, n).to(args.device)
            for method in args.methods.split(","):
                kw = METHODS[method]
                times: dict[bool, list[float]] = {True: [], False: []}
                outs = {}
                for reuse in (True, False):  # warm-up (the measurement itself with --rounds 0)
                    t, outs[reuse] = timed(model, ids, method, reuse, kw)
                    if args.rounds == 0:
                        times[reuse].append(t)
                for _ in range(args.rounds):
                    for reuse in (False, True):
                        t, _ = timed(model, ids, method, reuse, kw)
                        times[reuse].append(t)
                a, b = statistics.median(times[False]), statistics.median(times[True])
                d = outs[True].diagnostics.get("prefix_reuse", {})
                diff = float((outs[True].scores - outs[False].scores).abs().max())
                frac = d.get("work_fraction")
                print(f"| {mname} | {n} | {method} | {a:.3f} | {b:.3f} | {b / a:.2f} | "
                      f"{'n/a (' + d.get('fallback', '?') + ')' if frac is None else f'{frac:.2f}'} | {diff:.1e} |",
                      flush=True)
    os.environ.pop("MECHATTR_PREFIX_REUSE", None)
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
