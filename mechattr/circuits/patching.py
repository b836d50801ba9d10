"""Exact interventions on the circuit graph: activation patching of nodes, path patching of
edges, and faithfulness of a circuit (every edge outside it ablated).

Edges are intervened on by rebuilding the reader's input: a reader's input is the sum of the
writers below it plus run-independent terms, so replacing writer ``w``'s share of reader ``r``'s
input is ``input_r − a_w(live) + a_w(replacement)``, applied at ``r``'s split input hook only
(no other reader sees the change). ``live`` is the writer's output in the intervened run itself,
so edges kept in a circuit carry what their writers compute there (EAP-IG / MIB / TransformerLens
4.3 faithfulness)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError, MethodError
from ..tl.adapter import as_adapter
from . import graph as G
from ._core import PairPlan, check_direction, check_gap, metric, resolve_pairs, run
from .graph import Graph

ABLATIONS = ("corrupt", "mean")
DEFAULT_BUDGETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def rebuild_run(
    adapter: Any,
    graph: Graph,
    pp: PairPlan,
    tokens: Tensor,
    swap: Tensor,
    repl: Tensor,
    node_swap: Tensor | None = None,
    node_repl: dict[str, Tensor] | None = None,
) -> Tensor:
    """Metric of a batch of intervened runs on ``tokens``.

    ``swap[b, w, r]``: in batch row b, reader r sees writer w's replacement ``repl[:, :, w]``
    ([1 or b, pos, writer, d_model]) instead of its live output. ``node_swap[b, w]``: writer w's
    own output is replaced in row b (by ``node_repl`` at its writer hook: hook_embed, hook_z,
    hook_mlp_out). No gradient."""
    b = swap.shape[0]
    tokens = tokens.expand(b, -1)
    swap = swap & graph.mask
    live: list[Tensor] = []
    hooks: list[tuple[str, Callable]] = []
    wst = torch.tensor(graph.writer_stage)
    rst = graph.reader_stage

    if node_swap is not None:
        assert node_repl is not None
        col = 0
        for name, sl in graph.writer_hooks():
            k = sl.stop - sl.start
            if name.endswith("hook_result"):
                name = name.replace("hook_result", "hook_z")
            sel = node_swap[:, sl]  # [b, k]
            if bool(sel.any()):
                def fn(x: Tensor, hook: Any, sel=sel, v=node_repl[name]) -> Tensor:
                    if x.dim() == 4:
                        m = sel[:, None, :, None].to(x.dtype)
                    else:
                        m = sel[:, :1, None].to(x.dtype)
                    return x * (1 - m) + v.to(x.dtype) * m

                hooks.append((name, fn))
            col += k

    def grab(sl: slice) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            # each writer's (live - replacement), once, into a writer-major buffer
            # [b, writer, pos * d_model] that the reader hooks read without copying
            h = G.as_heads(x.detach())
            if not live:
                live.append(torch.empty(b, len(graph.writers), h.shape[1] * h.shape[3], dtype=h.dtype, device=h.device))
            diff = live[0][:, sl].view(b, sl.stop - sl.start, h.shape[1], h.shape[3])
            torch.sub(rearrange(h, "b p k d -> b k p d"), rearrange(repl[:, :, sl].to(h.dtype), "b p k d -> b k p d"), out=diff)

        return fn

    for name, sl in graph.writer_hooks():
        hooks.append((name, grab(sl)))

    def make(sl: slice) -> Callable:
        n_avail = int((wst < rst[sl.start]).sum())
        sw = swap[:, :n_avail, sl]  # [b, w, r]
        if not bool(sw.any()):
            return lambda x, hook: None

        def fn(x: Tensor, hook: Any) -> Tensor:
            diff = live[0][:, :n_avail]
            # corr[b, p, r, d] = sum_w sw[b, w, r] diff[b, w, (p d)], one batched matmul (several
            # times faster than a generic einsum over [b, p, w, d] for these shapes)
            corr = torch.bmm(rearrange(sw.to(diff.dtype), "b w r -> b r w"), diff)
            corr = rearrange(corr, "b r (p d) -> b p r d", p=x.shape[1])
            if x.dim() == 4:
                return x - corr
            return x - corr[:, :, 0]

        return fn

    for name, _, sl in graph.reader_hooks():
        hooks.append((name, make(sl)))
    with G.split_flags(adapter), torch.no_grad():
        return metric(adapter, pp.plan, tokens, None, hooks)


# ----- faithfulness ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faithfulness:
    """f(C) = (m(C) − m(∅)) / (m(N) − m(∅)) with metrics averaged over pairs."""

    f: float
    m_circuit: float
    m_full: float
    m_empty: float
    n_edges: int
    total_edges: int
    ablation: str
    per_pair: list[dict[str, float]] = field(default_factory=list)


def _replacements(adapter, graph, pairs: list[PairPlan], ablation: str) -> list[Tensor]:
    if ablation == "corrupt":
        return [run(adapter, graph, pp.plan, pp.corrupt).writers for pp in pairs]
    lens = {pp.clean.shape[-1] for pp in pairs}
    if len(lens) > 1:
        raise InputError(
            "ablation='mean' averages each writer position by position over the pairs' prompts, "
            "so every pair must have the same token length; use ablation='corrupt' otherwise."
        )
    acts = [run(adapter, graph, pp.plan, t).writers for pp in pairs for t in (pp.clean, pp.corrupt)]
    mean = torch.stack(acts).mean(0)
    return [mean] * len(pairs)


def _masks(graph: Graph, circuits: Sequence[Tensor]) -> Tensor:
    return torch.stack([graph.mask & ~c for c in circuits])  # ablate what is outside


def _faith_many(adapter, graph, pairs, circuits: list[Tensor], ablation: str, batch_size: int):
    """(m(C) per circuit [n_circ], m_full, m_empty, per-pair rows)."""
    reps = _replacements(adapter, graph, pairs, ablation)
    mc_tot = torch.zeros(len(circuits), dtype=torch.float64)
    mf = me = 0.0
    rows = []
    masks = _masks(graph, circuits)
    for pp, rep in zip(pairs, reps):
        full = float(run(adapter, graph, pp.plan, pp.clean).metric[0])
        if ablation == "corrupt":
            empty = float(run(adapter, graph, pp.plan, pp.corrupt).metric[0])
        else:
            empty = float(rebuild_run(adapter, graph, pp, pp.clean, graph.mask[None], rep)[0])
        ms = []
        for i in range(0, len(circuits), batch_size):
            ms.append(rebuild_run(adapter, graph, pp, pp.clean, masks[i : i + batch_size], rep).double().cpu())
        m = torch.cat(ms)
        mc_tot += m
        mf += full
        me += empty
        rows.append({"m_full": full, "m_empty": empty, "m_circuit": [float(v) for v in m]})
    n = len(pairs)
    return mc_tot / n, mf / n, me / n, rows


def _circuit_mask(graph: Graph, edges: Any) -> Tensor:
    if isinstance(edges, Tensor):
        if edges.shape != graph.mask.shape or edges.dtype != torch.bool:
            raise InputError(f"A circuit mask must be a bool tensor of shape {tuple(graph.mask.shape)}.")
        return edges & graph.mask
    if isinstance(edges, (str, bytes)) or not hasattr(edges, "__iter__"):
        raise InputError("edges must be a list of (writer, reader) pairs or 'writer->reader' strings.")
    return graph.edge_mask(edges)


def faithfulness(
    model: Any,
    edges: Any,
    clean: Any,
    corrupt: Any = None,
    target: Any = None,
    *,
    contrast: Any = None,
    kind: str | None = None,
    ablation: str = "corrupt",
    batch_size: int = 8,
) -> Faithfulness:
    """How much of the clean − corrupt metric gap the circuit ``edges`` recovers, exactly.

    Every edge outside the circuit is ablated by rebuilding its reader's input with the writer's
    corrupt output (``ablation="corrupt"``, then m(∅) = m(corrupt)) or its mean over all the pairs'
    clean and corrupt prompts (``"mean"``, m(∅) measured with every edge ablated). Pairs are
    averaged before the ratio: f = (mean m(C) − mean m(∅)) / (mean m(N) − mean m(∅))."""
    if ablation not in ABLATIONS:
        raise MethodError(f"ablation must be one of {list(ABLATIONS)}, got {ablation!r}.")
    adapter = as_adapter(model)
    G.check_model(adapter)
    graph = G.Graph.of(adapter)
    with adapter.guard():
        cmask = _circuit_mask(graph, edges)
        pairs = resolve_pairs(adapter, clean, corrupt, target, contrast, kind)
        run(adapter, graph, pairs[0].plan, pairs[0].clean, check_sum=True)
        mc, mf, me, rows = _faith_many(adapter, graph, pairs, [cmask], ablation, batch_size)
    check_gap(mf, me, " on average over the pairs" if len(pairs) > 1 else "")
    f = (float(mc[0]) - me) / (mf - me)
    return Faithfulness(f, float(mc[0]), mf, me, int(cmask.sum()), graph.n_edges, ablation,
                        [{"m_full": r["m_full"], "m_empty": r["m_empty"], "m_circuit": r["m_circuit"][0]} for r in rows])


def faithfulness_many(
    model: Any,
    circuits: Sequence[Any],
    clean: Any,
    corrupt: Any = None,
    target: Any = None,
    *,
    contrast: Any = None,
    kind: str | None = None,
    ablation: str = "corrupt",
    batch_size: int = 128,
) -> Float[Tensor, " circuit"]:
    """f of many circuits (edge lists or [writer, reader] masks) at once, exactly as
    :func:`faithfulness` computes each, ``batch_size`` circuits per forward pass. For exhaustive
    searches over small models (see :func:`mechattr.circuits.select.enumerate_circuits`)."""
    if ablation not in ABLATIONS:
        raise MethodError(f"ablation must be one of {list(ABLATIONS)}, got {ablation!r}.")
    if isinstance(circuits, Tensor) or not isinstance(circuits, Sequence) or not len(circuits):
        raise InputError("circuits must be a non-empty list of circuits (edge lists or [writer, reader] masks).")
    adapter = as_adapter(model)
    G.check_model(adapter)
    graph = G.Graph.of(adapter)
    with adapter.guard():
        masks = [_circuit_mask(graph, c) for c in circuits]
        pairs = resolve_pairs(adapter, clean, corrupt, target, contrast, kind)
        run(adapter, graph, pairs[0].plan, pairs[0].clean, check_sum=True)
        mc, mf, me, _ = _faith_many(adapter, graph, pairs, masks, ablation, batch_size)
    check_gap(mf, me, " on average over the pairs" if len(pairs) > 1 else "")
    return (mc - me) / (mf - me)


@dataclass(frozen=True)
class FaithfulnessCurve:
    """f over edge budgets; CPR = area under f and CMD = area between f and 1 (trapezoid over
    the budget fraction, with f(0) = 0 at budget 0), as in MIB."""

    budgets: list[float]
    n_edges: list[int]
    f: list[float]
    cpr: float
    cmd: float
    method: str
    ablation: str
    m_full: float
    m_empty: float

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"budget": self.budgets, "n_edges": self.n_edges, "f": self.f})

    def plot(self, ax: Any = None, label: str | None = None) -> Any:
        try:
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError(
                "FaithfulnessCurve.plot needs matplotlib: pip install matplotlib "
                "(or use .to_dataframe())."
            ) from e
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(self.budgets, self.f, marker="o", label=label or f"{self.method} (CPR {self.cpr:.2f}, CMD {self.cmd:.2f})")
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("fraction of edges kept")
        ax.set_ylabel("faithfulness f(C)")
        ax.legend(fontsize=8)
        return ax


def _area(x: list[float], y: list[float]) -> float:
    xs, ys = [0.0] + list(x), [0.0] + list(y)
    return float(sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)))


def faithfulness_curve(
    model: Any,
    scores: Any,
    clean: Any,
    corrupt: Any = None,
    target: Any = None,
    *,
    contrast: Any = None,
    kind: str | None = None,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    mode: str = "greedy",
    ablation: str = "corrupt",
    batch_size: int = 8,
    prune: bool = True,
    fill: bool = True,
) -> FaithfulnessCurve:
    """Faithfulness of the circuits chosen from ``scores`` (an :class:`EdgeAttribution` or a
    [writer, reader] tensor) at each budget; all budgets of a pair run in one batched forward."""
    from .attribution import EdgeAttribution
    from .select import from_ranking, n_for_budget, ranking

    if ablation not in ABLATIONS:
        raise MethodError(f"ablation must be one of {list(ABLATIONS)}, got {ablation!r}.")
    adapter = as_adapter(model)
    G.check_model(adapter)
    graph = G.Graph.of(adapter)
    budgets = [float(b) for b in budgets]
    for b in budgets:
        n_for_budget(graph, b, None)
    if isinstance(scores, EdgeAttribution):
        method, sc = scores.method, scores.scores
    elif isinstance(scores, Tensor) and scores.shape == graph.mask.shape:
        method, sc = "scores", scores
    else:
        raise InputError("scores must be an EdgeAttribution of this model or a [writer, reader] tensor.")
    order = ranking(graph, sc, mode=mode)
    circuits = [from_ranking(graph, order, n_for_budget(graph, b, None), prune=prune, fill=fill) for b in budgets]
    with adapter.guard():
        pairs = resolve_pairs(adapter, clean, corrupt, target, contrast, kind)
        run(adapter, graph, pairs[0].plan, pairs[0].clean, check_sum=True)
        mc, mf, me, _ = _faith_many(adapter, graph, pairs, circuits, ablation, batch_size)
    check_gap(mf, me)
    f = [(float(v) - me) / (mf - me) for v in mc]
    cpr = _area(budgets, f)
    cmd = _area(budgets, [abs(1 - v) for v in f])
    return FaithfulnessCurve(budgets, [int(c.sum()) for c in circuits], f, cpr, cmd, method, ablation, mf, me)


# ----- patching ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchResult:
    """Effects m(patched) − m(base) of each patched node or edge (or of all at once), averaged
    over pairs. ``base`` is the corrupt run for ``direction="denoise"``, the clean run for
    ``"noise"``."""

    effects: dict[str, float]
    direction: str
    m_base: float
    m_other: float

    def to_dataframe(self) -> Any:
        import pandas as pd

        return pd.DataFrame({"name": list(self.effects), "effect": list(self.effects.values())})


def patch(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    target: Any = None,
    *,
    nodes: Sequence[str] | None = None,
    edges: Sequence[Any] | None = None,
    contrast: Any = None,
    kind: str | None = None,
    direction: str = "denoise",
    together: bool = False,
    batch_size: int = 16,
) -> PatchResult:
    """Activation patching of ``nodes`` (``input``, ``a{L}.h{H}``, ``m{L}``: the node's output set
    to the other run's) or path patching of ``edges`` (only that reader's input gets the writer's
    other-run output). Each item alone (``together=False``) or all at once."""
    check_direction(direction)
    if (nodes is None) == (edges is None):
        raise InputError("Give exactly one of nodes= or edges= to patch.")
    adapter = as_adapter(model)
    G.check_model(adapter)
    graph = G.Graph.of(adapter)
    items = list(nodes if nodes is not None else edges)  # type: ignore[arg-type]
    if not items:
        raise InputError("Nothing to patch: the list of nodes/edges is empty.")
    W = len(graph.writers)
    if nodes is not None:
        wi = graph.writer_index
        for n in items:
            if graph.check_node(n) == "logits":
                raise InputError("'logits' is not a writer; patch the writers that feed it.")
        nsel = torch.zeros(len(items), W, dtype=torch.bool)
        for i, n in enumerate(items):
            nsel[i, wi[n]] = True
        names = list(items)
    else:
        esel = torch.stack([graph.edge_mask([e]) for e in items])
        names = [f"{graph.writers[w]}->{graph.readers[r]}" for w, r in (m.nonzero()[0].tolist() for m in esel)]
    if together:
        names = ["+".join(names)]
        if nodes is not None:
            nsel = nsel.any(0, keepdim=True)
        else:
            esel = esel.any(0, keepdim=True)
    tot = torch.zeros(len(names), dtype=torch.float64)
    mb = mo = 0.0
    with adapter.guard():
        pairs = resolve_pairs(adapter, clean, corrupt, target, contrast, kind)
        run(adapter, graph, pairs[0].plan, pairs[0].clean, check_sum=True)
        for pp in pairs:
            base_t, other_t = (pp.corrupt, pp.clean) if direction == "denoise" else (pp.clean, pp.corrupt)
            other = run(adapter, graph, pp.plan, other_t, keep_z=nodes is not None)
            base_m = float(run(adapter, graph, pp.plan, base_t).metric[0])
            ms = []
            for i in range(0, len(names), batch_size):
                if nodes is not None:
                    sel = nsel[i : i + batch_size]
                    nrep = {G.EMBED: other.writers[:, :, 0]}
                    col = 1
                    for layer in range(graph.n_layers):
                        nrep[G.z_hook(layer)] = other.z[layer]  # type: ignore[index]
                        col += graph.n_heads
                        if graph.has_mlp:
                            nrep[G.mlp_out(layer)] = other.writers[:, :, col]
                            col += 1
                    none = torch.zeros(sel.shape[0], W, len(graph.readers), dtype=torch.bool)
                    m = rebuild_run(adapter, graph, pp, base_t, none, other.writers, sel, nrep)
                else:
                    m = rebuild_run(adapter, graph, pp, base_t, esel[i : i + batch_size], other.writers)
                ms.append(m.double().cpu())
            tot += torch.cat(ms) - base_m
            mb += base_m
            mo += float(other.metric[0])
    n = len(pairs)
    return PatchResult(dict(zip(names, (tot / n).tolist())), direction, mb / n, mo / n)


__all__ = ["patch", "PatchResult", "faithfulness", "faithfulness_many", "Faithfulness", "faithfulness_curve", "FaithfulnessCurve",
           "DEFAULT_BUDGETS", "rebuild_run"]
