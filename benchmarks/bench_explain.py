"""``make demo``'s work, phase by phase: import, model load, probe fit, and ``explain`` on each of
the three demo examples — wall time and this process's CPU time (CPU time is what a busy, shared
machine does not inflate much; wall time is what a user waits). The issue's budget: the whole demo
in ≤ 90 s on 2 CPU cores after installation.

    OMP_NUM_THREADS=1 python benchmarks/bench_explain.py [--model smollm2-135m] [--budget fast]

Prints one line per phase and the load average before and after, so a busy machine shows.
"""

from __future__ import annotations

import argparse
import os
import time

t_wall0, t_cpu0 = time.perf_counter(), time.process_time()


def phase(name: str, t: tuple[float, float]) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    print(f"{name:<28} wall {w - t[0]:6.1f} s   cpu {c - t[1]:6.1f} s")
    return w, c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--budget", default="fast", choices=["fast", "thorough"])
    args = ap.parse_args()
    print("load average before:", os.getloadavg())
    t = (t_wall0, t_cpu0)
    import mechattr as ma
    from mechattr.explain import explain
    from mechattr.explain.demo import examples

    t = phase("import", t)
    model = ma.load_model(args.model)
    t = phase("load model", t)
    ex = examples(model)
    t = phase("fit the pun probe", t)
    for name, text, kw in ex:
        explain(model, text, budget=args.budget, **kw).to_html(os.devnull)
        t = phase(f"explain: {name}", t)
    phase("total", (t_wall0, t_cpu0))
    print("load average after:", os.getloadavg())


if __name__ == "__main__":
    main()
