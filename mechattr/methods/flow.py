"""Maximum flow through the layered attention graph (attention flow, Abnar & Zuidema 2020).

The graph
---------
Given per-layer mixing matrices ``caps[l]`` (``l = 0 .. L-1``, the residual-augmented, row-normalised
attention ``Â_{l+1}`` of :func:`mechattr.methods.attention.rollout_matrices`), the flow network of
depth ``D`` (``1 <= D <= L``) is:

* nodes ``(k, i)`` for layer index ``k = 0 .. D`` and position ``i``; layer 0 holds the input tokens;
* an edge from ``(k-1, j)`` to ``(k, i)`` with capacity ``caps[k-1][i, j]`` for every ``j <= i``
  (the causal mask; ``caps[k-1][i, j] = 0`` for ``j > i`` anyway);
* for input token ``j`` the source is ``(0, j)`` and the sink is ``(D, t)``, ``t`` the target's
  read position.

The flow score of token ``j`` at depth ``D`` is the maximum ``(0, j) -> (D, t)`` flow value.

How it is computed
------------------
A generic max-flow on the full graph (networkx) costs about a second per (source, depth) pair at
12 layers x 64 tokens. Here, for every pair, only the nodes that lie on a source-to-sink path are
kept (positions ``j .. t`` in the middle layers, one node in the first and the last layer), and all
pairs are packed as disjoint copies into one graph with a super source and a super sink. Disjoint
copies do not interact, so a maximum flow of the union is a maximum flow of every copy: one call of
scipy's compiled Dinic solver (``scipy.sparse.csgraph.maximum_flow``) handles hundreds of pairs.

That solver needs int32 capacities. Capacities are scaled by ``scale`` (default 2**30; every node
receives at most 1, so no flow can overflow) and rounded *down*, so the integer flow divided by
``scale`` is a feasible flow of the real graph: a lower bound. From the integer flow's residual graph
we take the minimum cut (the nodes still reachable from the super source) and return its capacity
under the *exact* float64 capacities: an upper bound, since every cut bounds every flow. The true
maximum flow lies between the two; ``max_gap`` reports the widest bracket (below ``edges in the cut
/ scale``, typically ~1e-8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from jaxtyping import Float

from ..errors import MethodError

DEFAULT_SCALE = 2**30
# Edges per solver call: bounds memory (scipy keeps a few int32 arrays per edge and reverse edge).
MAX_EDGES_PER_CALL = 200_000


@dataclass
class FlowResult:
    values: np.ndarray  # [depth, rows, src]: maximum flow (upper bound of the bracket)
    lower: np.ndarray  # [depth, rows, src]: feasible flow value (lower bound)
    max_gap: float
    n_problems: int
    n_solver_calls: int


@dataclass
class _Copy:
    depth: int  # D
    target: int  # t
    source: int  # j
    row: int


def _tri(n: int, cache: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(dst, src) relative position pairs with src <= dst, for ``n`` positions."""
    if n not in cache:
        i, k = np.tril_indices(n)
        cache[n] = (i.astype(np.int64), k.astype(np.int64))
    return cache[n]


def _copy_edges(
    caps: np.ndarray, c: _Copy, base: int, tri_cache: dict
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Edges (u, v, float capacity) of one pruned copy with node ids from ``base``; node count.

    Node layout: ``base`` = source (0, j); ``base + 1 + (k-1) n + (p - j)`` = (k, p) for middle
    layers k = 1 .. D-1 and p = j .. t; the last node = sink (D, t)."""
    j, t, D = c.source, c.target, c.depth
    n = t - j + 1
    sink = base + 1 + (D - 1) * n
    if D == 1:
        return (
            np.array([base]),
            np.array([sink]),
            np.array([caps[0, t, j]]),
            2,
        )
    rel = np.arange(n)
    us, vs, cs = [np.full(n, base)], [base + 1 + rel], [caps[0, j + rel, j]]
    if D > 2:
        di, si = _tri(n, tri_cache)
        ks = np.arange(2, D)  # layer index of the edge's head node
        u = base + 1 + (ks[:, None] - 2) * n + si[None, :]
        v = base + 1 + (ks[:, None] - 1) * n + di[None, :]
        cap = caps[ks[:, None] - 1, j + di[None, :], j + si[None, :]]
        us.append(u.ravel())
        vs.append(v.ravel())
        cs.append(cap.ravel())
    us.append(base + 1 + (D - 2) * n + rel)
    vs.append(np.full(n, sink))
    cs.append(caps[D - 1, t, j + rel])
    return np.concatenate(us), np.concatenate(vs), np.concatenate(cs), sink - base + 1


def _n_edges(c: _Copy) -> int:
    n = c.target - c.source + 1
    return 1 if c.depth == 1 else 2 * n + (c.depth - 2) * n * (n + 1) // 2


def _solve_union(caps: np.ndarray, copies: Sequence[_Copy], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper (min-cut under float capacities) and lower (feasible integer flow) values per copy."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    tri_cache: dict = {}
    us, vs, cs, copy_of_edge = [], [], [], []
    sources, sinks = [], []
    base = 2  # 0 = super source, 1 = super sink
    for ci, c in enumerate(copies):
        u, v, cap, n_nodes = _copy_edges(caps, c, base, tri_cache)
        us.append(u)
        vs.append(v)
        cs.append(cap)
        copy_of_edge.append(np.full(u.shape[0], ci))
        sources.append(base)
        sinks.append(base + n_nodes - 1)
        base += n_nodes
    n_nodes = base
    u = np.concatenate(us)
    v = np.concatenate(vs)
    cf = np.concatenate(cs).astype(np.float64)
    owner = np.concatenate(copy_of_edge)
    ci_ = np.floor(cf * scale).astype(np.int64)
    keep = ci_ > 0
    u_i, v_i, c_i = u[keep], v[keep], ci_[keep]
    # Super edges: a copy never carries more than the sink's in-capacity (<= scale), so 2*scale
    # is effectively infinite and stays inside int32.
    src_arr, sink_arr = np.array(sources), np.array(sinks)
    big = np.full(len(copies), 2 * scale - 1, dtype=np.int64)
    uu = np.concatenate([u_i, np.zeros(len(copies), dtype=np.int64), sink_arr])
    vv = np.concatenate([v_i, src_arr, np.ones(len(copies), dtype=np.int64)])
    cc = np.concatenate([c_i, big, big])
    if cc.max(initial=0) >= 2**31:
        raise MethodError(f"Flow capacity scale {scale} is too large for the int32 solver; use <= 2**30.")
    graph = coo_matrix((cc.astype(np.int32), (uu, vv)), shape=(n_nodes, n_nodes)).tocsr()
    res = maximum_flow(graph, 0, 1, method="dinic")
    flow = res.flow.tocsr()
    # Per-copy integer flow: what enters the super sink from that copy's sink.
    lower = np.asarray(flow[sink_arr, 1].todense()).ravel().astype(np.float64) / scale
    # Residual graph (capacity - flow, reverse edges have capacity 0): positive entries are
    # usable arcs; the nodes reachable from the super source form the minimum cut's source side.
    residual = (graph.astype(np.int64) - flow.astype(np.int64)).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reach = np.zeros(n_nodes, dtype=bool)
    reach[breadth_first_order(residual, 0, directed=True, return_predecessors=False)] = True
    cut = reach[u] & ~reach[v]
    upper = np.bincount(owner[cut], weights=cf[cut], minlength=len(copies))
    return upper, lower


def layered_max_flow(
    caps: Float[np.ndarray, "layer pos pos"],
    targets: Sequence[int],
    depths: Sequence[int] | None = None,
    scale: int = DEFAULT_SCALE,
) -> FlowResult:
    """Maximum flow from every input token ``(0, j)`` to ``(D, t)`` for each target position ``t``
    and depth ``D`` (default ``1 .. L``): ``values[d, r, j]``, zero for ``j > t`` (no path).

    ``caps[l][i, j]`` is the capacity of the edge ``(l, j) -> (l+1, i)``; see the module docstring
    for the graph and the exactness bracket."""
    caps = np.asarray(caps, dtype=np.float64)
    if caps.ndim != 3 or caps.shape[1] != caps.shape[2]:
        raise MethodError(f"Flow capacities must be [layer, pos, pos], got shape {caps.shape}.")
    if (caps < 0).any():
        raise MethodError("Flow capacities must be non-negative.")
    L, T, _ = caps.shape
    depths = list(range(1, L + 1)) if depths is None else [int(d) for d in depths]
    for d in depths:
        if not 1 <= d <= L:
            raise MethodError(f"Flow depth {d} out of range 1..{L}.")
    caps = np.tril(caps)  # the causal mask: a position never reads a later one
    values = np.zeros((len(depths), len(targets), T))
    lower = np.zeros_like(values)
    copies = [
        (di, _Copy(depth=d, target=int(t), source=j, row=r))
        for di, d in enumerate(depths)
        for r, t in enumerate(targets)
        for j in range(int(t) + 1)
    ]
    # Identical (depth, target) pairs (several target rows read at one position) are solved once.
    unique: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for di, c in copies:
        unique.setdefault((c.depth, c.target, c.source), []).append((di, c.row))
    todo = [_Copy(d, t, j, -1) for (d, t, j) in unique]
    calls = 0
    gap = 0.0
    i = 0
    while i < len(todo):
        chunk, n_e = [], 0
        while i < len(todo) and (not chunk or n_e + _n_edges(todo[i]) <= MAX_EDGES_PER_CALL):
            chunk.append(todo[i])
            n_e += _n_edges(todo[i])
            i += 1
        up, lo = _solve_union(caps, chunk, scale)
        calls += 1
        gap = max(gap, float((up - lo).max(initial=0.0)))
        for c, a, b in zip(chunk, up, lo):
            for di, r in unique[(c.depth, c.target, c.source)]:
                values[di, r, c.source] = a
                lower[di, r, c.source] = b
    return FlowResult(values, lower, gap, len(todo), calls)
