"""Attention flow: mechattr's layered max-flow against a plain networkx max-flow of the same graph.

Problem: 12 layers x 64 tokens, one target (the last position), every source token, every depth
(768 max-flow problems) — what ``method="attention_flow"`` computes for one target row.

The networkx reference (``nx.maximum_flow_value`` on the full layered graph) takes about a second
per problem, so by default it runs on a stratified sample (``--sample`` sources per depth, spread
over the positions) and its total is extrapolated per depth; ``--full`` runs all 768. The sampled
pairs also check agreement (|difference| < 1e-6).

    python benchmarks/bench_flow.py [--layers 12] [--tokens 64] [--sample 3] [--full]
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np

from mechattr.methods.flow import layered_max_flow


def random_caps(rng: np.random.Generator, L: int, T: int, w: float = 0.5) -> np.ndarray:
    """Residual-augmented, row-normalised causal attention with peaky rows (like trained heads)."""
    a = np.tril(rng.random((L, T, T)) ** 4)
    a[:, :, 0] += 2.0 * rng.random((L, T))  # an attention sink on the first token
    a /= a.sum(-1, keepdims=True)
    m = (1 - w) * a + w * np.eye(T)
    return m / m.sum(-1, keepdims=True)


def nx_graph(caps: np.ndarray, depth: int) -> nx.DiGraph:
    g = nx.DiGraph()
    T = caps.shape[-1]
    for k in range(1, depth + 1):
        for i in range(T):
            for j in range(i + 1):
                g.add_edge((k - 1, j), (k, i), capacity=float(caps[k - 1, i, j]))
    return g


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--sample", type=int, default=3, help="networkx sources timed per depth")
    ap.add_argument("--full", action="store_true", help="time networkx on every (depth, source)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    L, T = args.layers, args.tokens
    caps = random_caps(np.random.default_rng(args.seed), L, T)
    t = T - 1

    layered_max_flow(caps[:2, :8, :8], [7])  # import scipy outside the timing
    t0 = time.perf_counter()
    res = layered_max_flow(caps, [t])
    ours = time.perf_counter() - t0

    rng = np.random.default_rng(args.seed + 1)
    ref_total = 0.0
    worst = 0.0
    n_ref = 0
    for d in range(1, L + 1):
        t0 = time.perf_counter()
        g = nx_graph(caps, d)
        build = time.perf_counter() - t0
        srcs = list(range(T)) if args.full else sorted(rng.choice(T, size=min(args.sample, T), replace=False))
        t0 = time.perf_counter()
        for j in srcs:
            v = nx.maximum_flow_value(g, (0, int(j)), (d, t))
            worst = max(worst, abs(v - res.values[d - 1, 0, j]))
        per = (time.perf_counter() - t0) / len(srcs)
        ref_total += build + per * T
        n_ref += len(srcs)

    kind = "measured" if args.full else f"extrapolated from {n_ref} timed problems"
    print(f"graph: {L} layers x {T} tokens, target position {t}, {L * T} (depth, source) max-flow problems")
    print(f"mechattr layered_max_flow: {ours:.3f} s ({res.n_solver_calls} solver calls, bracket gap {res.max_gap:.1e})")
    print(f"networkx maximum_flow_value: {ref_total:.1f} s ({kind})")
    print(f"max |difference| on checked problems: {worst:.2e}")
    print(f"speed-up ratio: {ref_total / ours:.0f}x")


if __name__ == "__main__":
    main()
