"""Choosing a circuit from edge scores: top-n, or greedy from the logits (EAP-IG / MIB), then
pruning edges not connected to both the input and the logits."""

from __future__ import annotations

import heapq

import torch
from torch import Tensor

from ..errors import InputError
from .graph import Graph

MODES = ("greedy", "topn")


def n_for_budget(graph: Graph, budget: float | None, n_edges: int | None) -> int:
    if (budget is None) == (n_edges is None):
        raise InputError("Give exactly one of budget= (a fraction of the edges, in (0, 1]) or n_edges=.")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise InputError(
                f"budget must be a fraction of the graph's edges in (0, 1], got {budget!r} "
                "(e.g. 0.05 for 5 %; pass n_edges= for a count)."
            )
        return max(1, int(round(budget * graph.n_edges)))
    if isinstance(n_edges, bool) or not isinstance(n_edges, int) or not 0 < n_edges <= graph.n_edges:
        raise InputError(f"n_edges must be an integer in [1, {graph.n_edges}], got {n_edges!r}.")
    return n_edges


def prune(graph: Graph, mask: Tensor) -> Tensor:
    """Keep the edges whose writer is reached from ``input`` and whose reader feeds a node that
    reaches ``logits``, both through circuit edges."""
    mask = mask & graph.mask
    W = len(graph.writers)
    wi = graph.writer_index
    # forward: which writers are reached from the input (writers are in topological order)
    reached = torch.zeros(W, dtype=torch.bool)
    reached[0] = True
    for w in range(1, W):
        ins = graph.writer_readers(graph.writers[w])
        reached[w] = bool((mask[:, ins] & reached[:, None]).any())
    # backward: which writers reach the logits
    to_out = torch.zeros(W, dtype=torch.bool)
    logits_r = len(graph.readers) - 1
    reader_ok = torch.zeros(len(graph.readers), dtype=torch.bool)
    reader_ok[logits_r] = True
    for w in range(W - 1, -1, -1):
        to_out[w] = bool((mask[w] & reader_ok).any())
        if to_out[w] and w > 0:
            for r in graph.writer_readers(graph.writers[w]):
                reader_ok[r] = True
    # a reader is useful when one of the nodes it feeds reaches the output
    ok_reader = torch.zeros(len(graph.readers), dtype=torch.bool)
    for r in range(len(graph.readers)):
        ok_reader[r] = any(n == "logits" or to_out[wi[n]] for n in graph.reader_nodes(r))
    return mask & reached[:, None] & ok_reader[None, :]


def select_edges(
    graph: Graph,
    scores: Tensor,
    *,
    budget: float | None = None,
    n_edges: int | None = None,
    mode: str = "greedy",
    absolute: bool = True,
    prune: bool = True,
) -> Tensor:
    """A [writer, reader] mask of the chosen edges.

    ``mode="topn"``: the ``n`` highest-scoring edges. ``mode="greedy"`` (EAP-IG's and MIB's): start
    at the logits and repeatedly add the highest-scoring edge into a reader whose node is already
    in the circuit, ``n`` times. Scores rank by magnitude unless ``absolute=False``. With ``prune``
    edges not connected to both the input and the logits are dropped afterwards (so a circuit can
    hold fewer than ``n`` edges)."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {list(MODES)}, got {mode!r}.")
    n = n_for_budget(graph, budget, n_edges)
    val = scores.abs() if absolute else scores
    val = torch.where(graph.mask, val.float(), torch.tensor(float("-inf")))
    chosen = torch.zeros_like(graph.mask)
    if mode == "topn":
        idx = torch.topk(val.reshape(-1), n).indices
        chosen.view(-1)[idx] = True
    else:
        W = len(graph.writers)
        heap: list[tuple[float, int, int]] = []
        in_circuit_reader = set()

        def open_reader(r: int) -> None:
            if r in in_circuit_reader:
                return
            in_circuit_reader.add(r)
            col = val[:, r]
            for w in torch.nonzero(graph.mask[:, r]).flatten().tolist():
                heapq.heappush(heap, (-float(col[w]), w, r))

        open_reader(len(graph.readers) - 1)
        count = 0
        while heap and count < n:
            _, w, r = heapq.heappop(heap)
            if chosen[w, r]:
                continue
            chosen[w, r] = True
            count += 1
            if w > 0:
                for rr in graph.writer_readers(graph.writers[w]):
                    open_reader(rr)
        del W
    return _prune(graph, chosen) if prune else chosen


_prune = prune

__all__ = ["select_edges", "prune", "n_for_budget", "MODES"]
