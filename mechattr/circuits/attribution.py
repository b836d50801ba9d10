"""Edge attribution patching: every edge of the circuit graph scored from one forward + backward
per gradient point.

For an edge ``w -> r`` (Syed et al. 2023; Hanna et al. 2024)::

    score(w -> r) = Δa_w · ∂m/∂(input of r)

summed over positions. ``Δa_w`` is the writer's clean-minus-corrupt output (``direction="denoise"``,
the default, with the gradient taken at the corrupt run: estimates m(corrupt with the edge set to
clean) − m(corrupt), TransformerLens 4.3's convention) or corrupt-minus-clean (``"noise"``, the
gradient at the clean run: estimates m(clean with the edge set to corrupt) − m(clean)). One
backward gives the gradient at every reader input, one cache gives every writer's Δ, so all
edges cost one contraction ``einsum("p w d, p r d -> w r")``.

Methods:

* ``eap``: one gradient, at the corrupt run (denoise) or the clean run (noise).
* ``eap_ig_inputs``: EAP-IG (Hanna et al. 2024): the reader gradients averaged over ``ig_steps``
  points on the straight line between the corrupt and clean token embeddings (Gauss–Legendre nodes
  and weights; the paper uses a right Riemann sum).
* ``eap_ig_activations``: the MIB variant (Mueller et al. 2025): every writer's output is set to
  the same interpolation between its corrupt and clean values at each step (the gradient still
  flows through the live value), and the reader gradients are averaged over the steps.
* ``atp_star``: AtP* (Kramár et al. 2024): query and key edges scored through the attention
  pattern recomputed exactly with the writer's Δ in the head's query (key) input,
  ``Σ (A' − A) · ∂m/∂A`` (the attention-saturation fix), and GradDrop for every edge: the estimate
  recomputed with the gradient through each layer's residual write dropped in turn,
  ``Σ_l |s_l| / (L − 1)`` with the sign of the undropped estimate.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ..tl import hooks as hk
from ..errors import InputError, MethodError, ResultFileError
from ..methods._common import rule_points
from ..tl.adapter import as_adapter
from . import graph as G
from ._core import Capture, PairPlan, check_direction, resolve_pairs, run
from .graph import Graph

METHODS = ("eap", "eap_ig_inputs", "eap_ig_activations", "atp_star")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EdgeAttribution:
    """Scores of every edge of a model's circuit graph (averaged over the prompt pairs).

    ``scores[w, r]`` is the score of edge ``writers[w] -> readers[r]`` (0 where there is no edge,
    see ``graph.mask``); ``scores_by_pos[p, w, r]`` keeps the positions when asked for and when
    every pair has the same length."""

    graph: Graph
    scores: Float[Tensor, "writer reader"]
    method: str
    direction: str
    params: dict[str, Any]
    tokens: list[str]
    corrupt_tokens: list[str]
    metric_clean: float
    metric_corrupt: float
    metric_name: str
    model_name: str
    n_pairs: int
    scores_by_pos: Tensor | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)
    patterns: dict[str, list[list[float]]] | None = None

    # ----- views -------------------------------------------------------------------------------
    @functools.cached_property
    def edge_scores(self) -> dict[tuple[str, str], float]:
        """``{(writer, reader): score}`` for every edge of the graph."""
        g = self.graph
        idx = g.mask.nonzero().tolist()
        vals = self.scores[g.mask].tolist()
        return {(g.writers[w], g.readers[r]): v for (w, r), v in zip(idx, vals)}

    @property
    def node_scores(self) -> dict[str, float]:
        """Each writer's outgoing edge scores summed (TransformerLens' aggregate: equal to the
        node's own attribution-patching score, since every writer feeds the logits)."""
        tot = (self.scores * self.graph.mask).sum(1).tolist()
        return dict(zip(self.graph.writers, tot))

    def top_edges(self, k: int = 10) -> list[tuple[str, str, float]]:
        """The ``k`` edges with the largest |score|, strongest first."""
        items = sorted(self.edge_scores.items(), key=lambda kv: -abs(kv[1]))[:k]
        return [(w, r, s) for (w, r), s in items]

    def to_records(self) -> list[dict[str, Any]]:
        return [
            {"edge": f"{w}->{r}", "writer": w, "reader": r, "score": s}
            for (w, r), s in sorted(self.edge_scores.items(), key=lambda kv: -abs(kv[1]))
        ]

    def to_dataframe(self) -> Any:
        """One row per edge (edge, writer, reader, score), sorted by |score|."""
        import pandas as pd

        return pd.DataFrame.from_records(self.to_records())

    # ----- circuits ----------------------------------------------------------------------------
    def circuit(
        self,
        budget: float | None = None,
        *,
        n_edges: int | None = None,
        mode: str = "greedy",
        absolute: bool = True,
        prune: bool = True,
        fill: bool = True,
    ) -> list[tuple[str, str]]:
        """The edges of the circuit at ``budget`` (a fraction of all edges in (0, 1]) or
        ``n_edges``; see :func:`mechattr.circuits.select.select_edges`."""
        from .select import select_edges

        mask = select_edges(self.graph, self.scores, budget=budget, n_edges=n_edges, mode=mode,
                            absolute=absolute, prune=prune, fill=fill)
        return [(self.graph.writers[w], self.graph.readers[r]) for w, r in mask.nonzero().tolist()]

    def to_mib_json(self, budget: float | None = None, n_edges: int | None = None, **kw: Any) -> dict[str, Any]:
        """The EAP-IG / MIB circuit file: ``cfg``, ``nodes`` {name: in_graph} and ``edges``
        {"w->r": {"score", "in_graph"}}; ``in_graph`` marks the circuit at the budget (all edges
        when no budget is given)."""
        g = self.graph
        chosen = set(self.circuit(budget, n_edges=n_edges, **kw)) if (budget or n_edges) else set(g.edge_list())
        nodes = {w: False for w in g.writers} | {"logits": True}
        edges = {}
        for (w, r), s in self.edge_scores.items():
            inn = (w, r) in chosen
            edges[f"{w}->{r}"] = {"score": s, "in_graph": inn}
            if inn:
                nodes[w] = True
                for n in g.reader_nodes(g.reader_index[r]):
                    nodes[n] = True
        return {
            "cfg": {"n_layers": g.n_layers, "n_heads": g.n_heads, "n_key_value_heads": g.n_kv_heads,
                    "parallel_attn_mlp": g.parallel_attn_mlp, "attn_only": not g.has_mlp,
                    "method": self.method, "direction": self.direction},
            "nodes": nodes,
            "edges": edges,
        }

    def save_mib_json(self, path: str | Path, **kw: Any) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_mib_json(**kw)))
        return p

    def to_graph_data(
        self,
        budget: float | None = 0.05,
        *,
        title: str | None = None,
        max_edges: int | None = 2000,
        faithfulness: Any = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """The plain JSON-able dict of the circuit display data contract (docs/circuits.md, sign convention)."""
        g = self.graph
        edges = sorted(self.edge_scores.items(), key=lambda kv: -abs(kv[1]))
        if max_edges is not None:
            edges = edges[:max_edges]
        chosen = set(self.circuit(budget, **kw)) if budget else set()
        node_sc = self.node_scores
        nodes = [{**g.node_info(w), "score": node_sc[w]} for w in g.writers] + [{**g.node_info("logits"), "score": None}]
        out_edges, in_c = [], []
        for i, ((w, r), s) in enumerate(edges):
            m = G._READER_RE.match(r)
            target, port = (f"a{m.group(1)}.h{m.group(2)}", m.group(3)) if m else (r, None)
            out_edges.append({"source": w, "target": target, "port": port, "score": float(s)})
            if (w, r) in chosen:
                in_c.append(i)
        faith = None
        if faithfulness is not None:
            faith = [{"budget": float(b), "n_edges": int(n), "f": float(f)} for b, n, f in
                     zip(faithfulness.budgets, faithfulness.n_edges, faithfulness.f)]
        return {
            "title": title or f"{self.method} circuit ({self.model_name})",
            "tokens": list(self.tokens),
            "n_layers": g.n_layers,
            "n_heads": g.n_heads,
            "metric": {"name": self.metric_name, "clean": self.metric_clean, "corrupt": self.metric_corrupt},
            "direction": self.direction,
            "method": self.method,
            "nodes": nodes,
            "edges": out_edges,
            "in_circuit": in_c if budget else None,
            "patterns": dict(self.patterns or {}),
            "faithfulness": faith,
        }

    # ----- files -------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """``path.safetensors`` (scores) + ``path.json`` (everything else); returns the JSON path."""
        from safetensors.torch import save_file

        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
        tensors = {"scores": self.scores.contiguous().float()}
        if self.scores_by_pos is not None:
            tensors["scores_by_pos"] = self.scores_by_pos.contiguous().float()
        save_file(tensors, str(base) + ".safetensors")
        g = self.graph
        meta = {
            "format": "mechattr.circuits.EdgeAttribution", "version": FORMAT_VERSION,
            "graph": {"n_layers": g.n_layers, "n_heads": g.n_heads, "n_kv_heads": g.n_kv_heads,
                      "has_mlp": g.has_mlp, "parallel_attn_mlp": g.parallel_attn_mlp},
            "method": self.method, "direction": self.direction, "params": self.params,
            "tokens": self.tokens, "corrupt_tokens": self.corrupt_tokens,
            "metric_clean": self.metric_clean, "metric_corrupt": self.metric_corrupt,
            "metric_name": self.metric_name, "model_name": self.model_name, "n_pairs": self.n_pairs,
            "diagnostics": self.diagnostics, "patterns": self.patterns,
        }
        jp = Path(str(base) + ".json")
        jp.write_text(json.dumps(meta, default=float))
        return jp

    @classmethod
    def load(cls, path: str | Path) -> "EdgeAttribution":
        from safetensors.torch import load_file

        base = Path(path)
        base = base.with_suffix("") if base.suffix in (".json", ".safetensors") else base
        jp, sp = Path(str(base) + ".json"), Path(str(base) + ".safetensors")
        try:
            meta = json.loads(jp.read_text())
            tensors = load_file(str(sp))
        except (OSError, ValueError) as e:
            raise ResultFileError(f"Cannot read an edge attribution from {base}(.json/.safetensors): {e}") from e
        if meta.get("format") != "mechattr.circuits.EdgeAttribution" or meta.get("version") != FORMAT_VERSION:
            raise ResultFileError(f"{jp} is not a mechattr edge attribution file of version {FORMAT_VERSION}.")
        gm = meta["graph"]
        graph = _graph_from(gm)
        if tuple(tensors["scores"].shape) != (len(graph.writers), len(graph.readers)):
            raise ResultFileError(f"{sp} holds scores of shape {tuple(tensors['scores'].shape)}, not the graph's.")
        return cls(
            graph=graph, scores=tensors["scores"], method=meta["method"], direction=meta["direction"],
            params=meta["params"], tokens=meta["tokens"], corrupt_tokens=meta["corrupt_tokens"],
            metric_clean=meta["metric_clean"], metric_corrupt=meta["metric_corrupt"],
            metric_name=meta["metric_name"], model_name=meta["model_name"], n_pairs=meta["n_pairs"],
            scores_by_pos=tensors.get("scores_by_pos"), diagnostics=meta.get("diagnostics", {}),
            patterns=meta.get("patterns"),
        )

    def show(self, budget: float = 0.05) -> Any:
        """The interactive circuit graph in a notebook (an IPython HTML object)."""
        from .display import show_circuit

        return show_circuit(self.to_graph_data(budget))


def _graph_from(gm: dict[str, Any]) -> Graph:
    class _Cfg:
        attn_only = not gm["has_mlp"]
        parallel_attn_mlp = gm["parallel_attn_mlp"]

    class _A:
        cfg = _Cfg()
        n_layers, n_heads, n_kv_heads = gm["n_layers"], gm["n_heads"], gm["n_kv_heads"]

    return Graph.of(_A())  # type: ignore[arg-type]


# ----- computation ------------------------------------------------------------------------------
def _ig_scores(adapter, graph, pp: PairPlan, delta: Tensor, start_e, end_e, steps, batch_size, per_position: bool,
               writer_interp=None) -> Tensor:
    """Σ_i w_i Δ·∂m/∂(reader inputs) at the points start + α_i (end − start) (Gauss–Legendre),
    each reader's gradient contracted with Δ as the backward reaches it (:func:`run`'s ``delta``)."""
    alphas, weights = rule_points(steps, "gausslegendre")
    dd = delta.double()
    acc = None
    for i in range(0, steps, batch_size):
        al = alphas[i : i + batch_size].to(adapter.device, adapter.dtype)
        w = weights[i : i + batch_size].to(adapter.device, torch.float64)
        kw = dict(grad=True, delta=dd, row_weights=w, per_position=per_position)
        if writer_interp is None:
            pts = start_e + al[:, None, None] * (end_e - start_e)
            cap = run(adapter, graph, pp.plan, pp.clean, embed=pts, **kw)
        else:
            vals = {n: s + al.view(-1, *([1] * (s.dim() - 1))) * (e - s) for n, (s, e) in writer_interp.items()}
            cap = run(adapter, graph, pp.plan, pp.clean.expand(len(al), -1), writer_values=vals, **kw)
        acc = cap.scores if acc is None else acc + cap.scores
    return acc  # type: ignore[return-value]


# Default pairs per ``eap`` pass. Measured (benchmarks/bench_circuits.py, docs/circuits.md): on
# SmolLM2-135M, 8 IOI pairs cost 4.7 forward+backward passes' worth one pair per pass, 2.65 at 4
# per pass and 2.5 at 8; on the GPT-2-small shape the peak grows ~55 MB per stacked pair of 15
# tokens (the per-head reader inputs): 4 per pass peak at 0.55x TL 4.3's edge tool, 8 at 1.06x.
EAP_PAIRS_PER_PASS = 4


def _writer_names(graph: Graph) -> list[str]:
    names = [G.EMBED]
    for layer in range(graph.n_layers):
        names.append(G.z_hook(layer))
        if graph.has_mlp:
            names.append(G.mlp_out(layer))
    return names


def edge_attribution(
    model: Any,
    clean: Any,
    corrupt: Any = None,
    target: Any = None,
    *,
    contrast: Any = None,
    kind: str | None = None,
    method: str = "eap_ig_inputs",
    ig_steps: int = 5,
    batch_size: int | None = None,
    direction: str = "denoise",
    per_position: bool = False,
    keep_patterns: bool = True,
) -> EdgeAttribution:
    """Score every edge of the model's circuit graph; see the module docstring.

    Args:
        model: a TransformerLens model (HookedTransformer or TransformerBridge).
        clean: one prompt, a list of prompts (pairs with ``corrupt``; scores are averaged over
            pairs), or a list of task pairs from :mod:`mechattr.circuits.tasks` with corrupt=None.
        corrupt: the corrupted prompt(s), each of the same token length as its clean prompt.
        target: the metric, as for :func:`mechattr.attribute` (one for all pairs or a list with
            one per pair). Default: logit difference between the clean and corrupt prompts'
            greedy next tokens. Probes, SAE features and functions work too.
        contrast: a foil token (or one per pair): the metric becomes target vs foil.
        kind: the target kind (``logit_diff`` by default with a contrast).
        method: ``eap``, ``eap_ig_inputs``, ``eap_ig_activations`` or ``atp_star``.
        ig_steps: gradient points of the EAP-IG methods.
        batch_size: gradient points per forward pass (default 8); for ``eap``, pairs per pass
            (pairs of one token length with logit targets are stacked; default
            ``EAP_PAIRS_PER_PASS`` = 4, which keeps most of stacking's speed on a CPU at well
            under the peak memory of TransformerLens' one-pair-at-a-time edge tool; give more on
            a GPU, see docs/circuits.md).
        direction: ``"denoise"`` (default) or ``"noise"``, see docs/circuits.md.
        per_position: also keep the scores per position (pairs of one length only).
        keep_patterns: store the first clean prompt's attention patterns for the display.
    """
    t0 = time.perf_counter()
    if method not in METHODS:
        raise MethodError(f"Unknown circuit method {method!r}; choose one of {list(METHODS)}.")
    check_direction(direction)
    if batch_size is None:
        batch_size = EAP_PAIRS_PER_PASS if method == "eap" else 8
    for nm, v in (("ig_steps", ig_steps), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise MethodError(f"{nm} must be an integer >= 1, got {v!r}.")
    adapter = as_adapter(model)
    G.check_model(adapter)
    graph = Graph.of(adapter)
    with adapter.guard():
        pairs = resolve_pairs(adapter, clean, corrupt, target, contrast, kind)
        if per_position and len({p.clean.shape[-1] for p in pairs}) > 1:
            raise InputError("per_position=True needs every pair to have the same token length.")
        total = None
        mc, mk = [], []
        patterns: dict[str, list[list[float]]] = {}
        if method == "eap":
            # pairs of one token length share their passes (a plan per batch row)
            total = _eap_stacked(adapter, graph, pairs, direction, per_position, batch_size, mc, mk)
            if keep_patterns:
                patterns = _patterns(adapter, pairs[0])
        for i, pp in enumerate(pairs if method != "eap" else []):
            first = i == 0
            denoise = direction == "denoise"
            # the run whose gradient is taken (denoise: corrupt) and the run Δ points to
            grad_pt_toks, other_toks = (pp.corrupt, pp.clean) if denoise else (pp.clean, pp.corrupt)
            if method == "atp_star":
                other = run(adapter, graph, pp.plan, other_toks, check_sum=first)
                here = run(adapter, graph, pp.plan, grad_pt_toks, grad=True)
                delta = (other.writers - here.writers)[0]
                s = _atp_star(adapter, graph, pp, grad_pt_toks, delta, here, per_position, batch_size)
                cap_clean, cap_corr = (other, here) if denoise else (here, other)
            else:
                need_z = method == "eap_ig_activations"
                cap_clean = run(adapter, graph, pp.plan, pp.clean, check_sum=first, keep_z=need_z)
                cap_corr = run(adapter, graph, pp.plan, pp.corrupt, keep_z=need_z)
                start, end = (cap_corr, cap_clean) if denoise else (cap_clean, cap_corr)
                delta = (end.writers - start.writers)[0]
                if method == "eap_ig_inputs":
                    e_s, e_e = start.writers[:, :, 0], end.writers[:, :, 0]
                    s = _ig_scores(adapter, graph, pp, delta, e_s, e_e, ig_steps, batch_size, per_position)
                else:
                    interp = _interp_values(graph, start, end)
                    s = _ig_scores(adapter, graph, pp, delta, None, None, ig_steps, batch_size, per_position,
                                   writer_interp=interp)
            mc.append(float(cap_clean.metric[0]))
            mk.append(float(cap_corr.metric[0]))
            total = s if total is None else total + s
            if first and keep_patterns:
                patterns = _patterns(adapter, pp)
        assert total is not None
        total = total / len(pairs)
    mask = graph.mask
    if per_position:
        by_pos = (total * mask).float()
        scores = by_pos.sum(0)
    else:
        by_pos = None
        scores = (total * mask).float()
    pp0 = pairs[0]
    return EdgeAttribution(
        graph=graph, scores=scores, method=method, direction=direction,
        params={"ig_steps": ig_steps if method.startswith("eap_ig") else 1, "batch_size": batch_size,
                "rule": "gausslegendre" if method.startswith("eap_ig") else None,
                "kind": kind, "per_position": per_position},
        tokens=adapter.str_tokens(pp0.clean), corrupt_tokens=adapter.str_tokens(pp0.corrupt),
        metric_clean=sum(mc) / len(mc), metric_corrupt=sum(mk) / len(mk),
        metric_name=f"{pp0.plan.description} [{', '.join(pp0.plan.labels)}]" if pp0.plan.labels else pp0.plan.description,
        model_name=adapter.name, n_pairs=len(pairs), scores_by_pos=by_pos,
        diagnostics={"seconds": time.perf_counter() - t0, "n_edges": graph.n_edges,
                     "metric_clean_per_pair": mc, "metric_corrupt_per_pair": mk,
                     "sum_of_scores": float(scores.sum()),
                     "metric_delta": (sum(mc) - sum(mk)) / len(mc) * (1 if direction == "denoise" else -1)},
        patterns=patterns or None,
    )


def _eap_stacked(adapter, graph, pairs: list[PairPlan], direction: str, per_position: bool, batch_size: int,
                 mc: list[float], mk: list[float]) -> Tensor:
    """Σ over pairs of the eap scores, pairs stacked ``batch_size`` to a pass (same length, logit
    targets; others alone): a no-grad pass on the run Δ points to, a forward + backward on the
    other. Appends each pair's clean and corrupt metric to ``mc`` / ``mk`` in pair order."""
    from ._core import stackable

    denoise = direction == "denoise"
    total = None
    got: dict[int, tuple[float, float]] = {}
    for gi, grp in enumerate(stackable(pairs, batch_size)):
        plans = [pairs[i].plan for i in grp] if len(grp) > 1 else pairs[grp[0]].plan
        cl = torch.cat([pairs[i].clean for i in grp])
        co = torch.cat([pairs[i].corrupt for i in grp])
        grad_pt, other_t = (co, cl) if denoise else (cl, co)
        other = run(adapter, graph, plans, other_t, check_sum=gi == 0)
        # the backward contracts each reader's gradient with Δ as it arrives (no gradient kept)
        here = run(adapter, graph, plans, grad_pt, grad=True, contract=other.writers, per_position=per_position)
        other.writers = None
        s = here.scores
        total = s if total is None else total + s
        m_o, m_h = other.metric.tolist(), here.metric.tolist()
        for k, i in enumerate(grp):
            got[i] = (m_o[k], m_h[k]) if denoise else (m_h[k], m_o[k])
    for i in range(len(pairs)):
        mc.append(got[i][0])
        mk.append(got[i][1])
    assert total is not None
    return total


def _interp_values(graph: Graph, start: Capture, end: Capture) -> dict[str, tuple[Tensor, Tensor]]:
    """(start, end) values at the writer hooks of EAP-IG-activations: token embedding, each
    layer's z (the head outputs are linear in z) and MLP outputs."""
    out: dict[str, tuple[Tensor, Tensor]] = {G.EMBED: (start.writers[:, :, 0], end.writers[:, :, 0])}
    col = 1
    for layer in range(graph.n_layers):
        out[G.z_hook(layer)] = (start.z[layer], end.z[layer])  # type: ignore[index]
        col += graph.n_heads
        if graph.has_mlp:
            out[G.mlp_out(layer)] = (start.writers[:, :, col], end.writers[:, :, col])
            col += 1
    return out


def _pattern_shifts(adapter, graph: Graph, toks: Tensor, delta: Tensor, batch_size: int) -> dict[tuple[int, str], Tensor]:
    """AtP*'s attention-saturation fix (Kramár et al. 2024, §3.1): for every writer w below layer
    l, the attention patterns of layer l recomputed exactly (softmax included) with w's Δ added
    to the query inputs (port q) or the key inputs (port k) of the layer's heads, minus the
    unpatched patterns: {(layer, port): [writer, head, query pos, key pos]}.

    One batch row per writer and port serves every layer at once: at each layer the row's Δ is
    added to the query (key) inputs, the patched pattern is recorded, and the unpatched pattern is
    passed on, so the layers above compute exactly what the unpatched run computes (a query or
    key input feeds nothing but its pattern). The heads of a layer do not interact before their
    patterns, so one row patches all of them at once."""
    L = graph.n_layers
    wst = torch.tensor(graph.writer_stage)
    n_avail = [int((wst < 2 * layer + 1).sum()) for layer in range(L)]
    n_feed = n_avail[-1]
    pnames = [hk.attn_pattern(layer) for layer in range(L)]
    base: dict[int, Tensor] = {}

    def keep_base(layer: int):
        def fn(x: Tensor, hook: Any) -> None:
            base[layer] = x.detach()

        return fn

    with G.split_flags(adapter), torch.no_grad():
        adapter.run_until(toks, pnames[-1], fwd_hooks=[(pnames[layer], keep_base(layer)) for layer in range(L)])
        out: dict[tuple[int, str], list[Tensor]] = {(layer, port): [] for layer in range(L) for port in "qk"}
        for port in "qk":
            for i in range(0, n_feed, batch_size):
                j = min(n_feed, i + batch_size)
                d = delta[:, i:j].permute(1, 0, 2)  # rows: writers i..j-1, [b, pos, d_model]
                hooks: list = []
                for layer in range(L):
                    rows = max(0, min(j, n_avail[layer]) - i)  # the rows whose writer is below the layer
                    if rows == 0:
                        continue

                    def add(x: Tensor, hook: Any, rows: int = rows) -> Tensor:
                        x = x.clone()
                        x[:rows] += d[:rows, :, None, :].to(x.dtype)
                        return x

                    def record(x: Tensor, hook: Any, layer: int = layer, rows: int = rows) -> Tensor:
                        out[(layer, port)].append(x[:rows].detach() - base[layer])
                        return base[layer].expand_as(x)

                    hooks += [((G.q_in if port == "q" else G.k_in)(layer), add), (pnames[layer], record)]
                adapter.run_until(toks.expand(j - i, -1), pnames[-1], fwd_hooks=hooks)
    return {k: torch.cat(v) if v else torch.zeros(0) for k, v in out.items()}


def _atp_star(adapter, graph, pp, toks, delta, here: Capture, per_position: bool, batch_size: int = 8) -> Tensor:
    """AtP* (Kramár et al. 2024): the query/key edges scored through the exactly recomputed
    attention pattern, (A'(w) − A) · ∂m/∂A, and GradDrop over layers for every edge:
    Σ_l |s_l| / (L − 1) with the sign of the undropped estimate s.

    The undropped estimate and the L dropped ones are rows of batched forward + backward passes:
    row 0 drops nothing, row 1 + l cuts the gradient through layer l's residual writes (the
    forward values are the same in every row)."""
    from ._core import metric as _metric

    if per_position:
        raise MethodError("atp_star has no per-position scores (its query/key edges sum over query-key "
                          "position pairs); use per_position=False or another method.")
    shifts = _pattern_shifts(adapter, graph, toks, delta, max(batch_size, 64))
    rhooks = graph.reader_hooks()
    L, H, g = graph.n_layers, graph.n_heads, graph.group
    n_rows = L + 1 if L >= 2 else 1
    pnames = [hk.attn_pattern(layer) for layer in range(L)]
    names_all = [n for n, _, _ in rhooks] + pnames
    out: list[Tensor] = []
    for r0 in range(0, n_rows, batch_size):
        rows = list(range(r0, min(n_rows, r0 + batch_size)))
        b = len(rows)
        taps: dict[str, Tensor] = {}

        def tap(name: str):
            def fn(x: Tensor, hook: Any) -> Tensor:
                dd = torch.zeros_like(x, requires_grad=True)
                taps[name] = dd
                return x + dd

            return fn

        def drop(sel: Tensor):
            def fn(x: Tensor, hook: Any) -> Tensor:
                # forward value unchanged; rows in sel pass no gradient back through this write
                m = sel.view(-1, *([1] * (x.dim() - 1))).to(x.device)
                return torch.where(m, x.detach(), x)

            return fn

        hooks: list = []
        for layer in range(L):
            sel = torch.tensor([r == 1 + layer for r in rows])
            if bool(sel.any()):
                hooks.append((G.attn_out(layer), drop(sel)))
                if graph.has_mlp:
                    hooks.append((G.mlp_out(layer), drop(sel)))
        hooks += [(n, tap(n)) for n in names_all]
        with G.split_flags(adapter), torch.enable_grad():
            m = _metric(adapter, pp.plan, toks.expand(b, -1), None, hooks)
            names = [n for n in names_all if n in taps]
            gs = torch.autograd.grad(m.sum(), [taps[n] for n in names], allow_unused=True)
        got = {n: gr for n, gr in zip(names, gs)}
        parts = []
        for n, _, sl in rhooks:
            gr = got.get(n)
            parts.append(torch.zeros(b, toks.shape[-1], sl.stop - sl.start, adapter.d_model, dtype=adapter.dtype,
                                     device=adapter.device) if gr is None else G.as_heads(gr))
        s = einsum(delta, torch.cat(parts, dim=2), "p w d, b p r d -> b w r").double()
        for layer in range(L):
            ga = got.get(pnames[layer])
            lr = graph.layer_readers(layer)
            for port in ("q", "k"):
                dA = shifts[(layer, port)]  # w h q k
                n_w = dA.shape[0]
                if ga is None or n_w == 0:
                    val = torch.zeros(b, n_w, H, dtype=torch.float64)
                else:
                    val = einsum(dA.double(), ga.double(), "w h q k, b h q k -> b w h")
                if port == "k" and g > 1:
                    val = val.reshape(b, n_w, H // g, g).sum(-1)
                s[:, :n_w, lr[port]] = val.to(s.device)
        out.append(s)
    est = torch.cat(out)
    plain = est[0]
    if L < 2:
        return plain
    return est[1:].abs().sum(0) / (L - 1) * torch.sign(plain)


def _patterns(adapter, pp: PairPlan) -> dict[str, list[list[float]]]:
    box: dict[str, Tensor] = {}
    hooks = []
    for layer in range(adapter.n_layers):
        name = hk.attn_pattern(layer)

        def fn(x: Tensor, hook: Any, name: str = name) -> None:
            box[name] = x.detach()

        hooks.append((name, fn))
    try:
        with torch.no_grad(), adapter.hooks(fwd_hooks=hooks):
            adapter.model(pp.clean)
    except Exception:  # patterns are optional in the display contract
        return {}
    out = {}
    for layer in range(adapter.n_layers):
        x = box.get(hk.attn_pattern(layer))
        if x is None:
            continue
        for h in range(x.shape[1]):
            out[f"a{layer}.h{h}"] = [[round(float(v), 4) for v in row] for row in x[0, h].tolist()]
    return out


__all__ = ["edge_attribution", "EdgeAttribution", "METHODS"]
