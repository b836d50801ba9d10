"""Shared machinery: clean/corrupt pairs resolved against a target, and forward passes that
capture every writer's output and every reader input's gradient in one forward + backward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError, MethodError, TargetError
from ..linking.heads import evaluate_hooked
from ..targets import Plan, hooked_logits
from ..tl.adapter import ModelAdapter
from . import graph as G
from .graph import Graph

DIRECTIONS = ("denoise", "noise")


@dataclass
class PairPlan:
    """One clean/corrupt pair: the target resolved on the clean prompt, both token rows."""

    plan: Plan
    clean: Tensor  # [1, pos]
    corrupt: Tensor  # [1, pos]
    clean_text: str | None
    corrupt_text: str | None


def _tokens(adapter: ModelAdapter, text: Any) -> Tensor:
    if isinstance(text, str):
        return adapter.tokenize(text)
    if isinstance(text, Tensor) and not text.is_floating_point():
        return adapter.check_length(text.reshape(1, -1).long().to(adapter.device))
    raise InputError(f"Give a prompt as a string or a 1-D tensor of token ids, got {type(text).__name__}.")


def check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise MethodError(f"direction must be one of {list(DIRECTIONS)}, got {direction!r}.")
    return direction


def _as_list(x: Any, n: int, what: str) -> list[Any]:
    if isinstance(x, (list, tuple)):
        if len(x) != n:
            raise InputError(f"{what} has {len(x)} entries for {n} prompt pairs; give one per pair or one for all.")
        return list(x)
    return [x] * n


def pairs_from(clean: Any, corrupt: Any, target: Any, contrast: Any, kind: Any = None) -> tuple[list, list, list, list, list]:
    """Normalise the accepted forms: one prompt each, two lists, or a list of task pairs
    (objects with clean/corrupt/target/contrast, e.g. from :mod:`mechattr.circuits.tasks`)."""
    if corrupt is None:
        items = list(clean) if isinstance(clean, (list, tuple)) else [clean]
        if not items or not all(hasattr(p, "clean") and hasattr(p, "corrupt") for p in items):
            raise InputError(
                "Give clean and corrupt prompts (one each or two lists), or a list of task pairs "
                "from mechattr.circuits.tasks (then corrupt=None)."
            )
        cl = [p.clean for p in items]
        co = [p.corrupt for p in items]
        tg = [getattr(p, "target", None) for p in items] if target is None else _as_list(target, len(items), "target")
        ct = [getattr(p, "contrast", None) for p in items] if contrast is None else _as_list(contrast, len(items), "contrast")
        kd = [getattr(p, "kind", None) for p in items] if kind is None else [kind] * len(items)
        return cl, co, tg, ct, kd
    if isinstance(clean, (list, tuple)) != isinstance(corrupt, (list, tuple)):
        raise InputError("clean and corrupt must both be single prompts or both be lists of the same length.")
    cl = list(clean) if isinstance(clean, (list, tuple)) else [clean]
    co = list(corrupt) if isinstance(corrupt, (list, tuple)) else [corrupt]
    if len(cl) != len(co) or not cl:
        raise InputError(f"Got {len(cl)} clean and {len(co)} corrupt prompts; give the same (non-zero) number.")
    return cl, co, _as_list(target, len(cl), "target"), _as_list(contrast, len(cl), "contrast"), [kind] * len(cl)


def resolve_pairs(
    adapter: ModelAdapter, clean: Any, corrupt: Any, target: Any, contrast: Any, kind: str | None
) -> list[PairPlan]:
    """Resolve each pair's target on its clean prompt. With no target, a pair's metric is the
    logit difference between the clean prompt's greedy next token and the corrupt prompt's
    (the log-prob of the clean greedy token when both predict the same)."""
    from ..api import resolve

    cl, co, tg, ct, kd = pairs_from(clean, corrupt, target, contrast, kind)
    out = []
    for i, (c, k, t, f, kind) in enumerate(zip(cl, co, tg, ct, kd)):
        ctoks, ktoks = _tokens(adapter, c), _tokens(adapter, k)
        if ctoks.shape[-1] != ktoks.shape[-1]:
            raise InputError(
                f"Pair {i}: the clean prompt has {ctoks.shape[-1]} tokens and the corrupted one "
                f"{ktoks.shape[-1]}; circuits compare activations position by position, so give "
                "prompts of the same token length (e.g. swap single-token names or numbers)."
            )
        if t is None and f is None:
            with torch.no_grad():
                a = int(adapter.logits(ctoks, positions=[ctoks.shape[-1] - 1])[0, 0].argmax())
                b = int(adapter.logits(ktoks, positions=[ktoks.shape[-1] - 1])[0, 0].argmax())
            t, f = (a, b) if a != b else (a, None)
        _, plan, _ = resolve(adapter, ctoks[0], t, contrast=f, kind=kind)
        n = ctoks.shape[-1]
        corr = torch.cat([ktoks, plan.tokens[:, n:]], dim=-1)
        out.append(PairPlan(plan, plan.tokens, corr, c if isinstance(c, str) else None, k if isinstance(k, str) else None))
    return out


def metric(adapter: ModelAdapter, plan: Plan | list[Plan], tokens: Tensor, embed: Tensor | None, hooks: Sequence) -> Tensor:
    """The metric of each batch row: the sum of the target's rows. ``plan`` may be a list with
    one logit plan per batch row (pairs stacked in one pass, see :func:`stackable`)."""
    if isinstance(plan, list):
        logits = hooked_logits(adapter, tokens, embed, hooks)
        return torch.cat([p.score(logits[i : i + 1]).sum(-1) for i, p in enumerate(plan)])
    vals = evaluate_hooked(adapter, plan, tokens, embed, fwd_hooks=hooks)
    return vals.sum(-1)


def stackable(pairs: Sequence[PairPlan], batch_size: int) -> list[list[int]]:
    """Groups of pair indices that can share one forward pass: same token length, logit targets
    (a plan per row), at most ``batch_size`` per group; other pairs stay alone."""
    from ..targets import LogitPlan

    groups: dict[int, list[int]] = {}
    out: list[list[int]] = []
    for i, pp in enumerate(pairs):
        if isinstance(pp.plan, LogitPlan) and batch_size > 1:
            g = groups.setdefault(pp.clean.shape[-1], [])
            g.append(i)
            if len(g) == batch_size:
                out.append(groups.pop(pp.clean.shape[-1]))
        else:
            out.append([i])
    out += list(groups.values())
    return sorted(out)


@dataclass
class Capture:
    writers: Float[Tensor, "batch pos writer d_model"] | None
    grads: Float[Tensor, "batch pos reader d_model"] | None
    metric: Float[Tensor, " batch"]
    z: list[Tensor] | None = None  # per layer [batch, pos, head, d_head], when asked
    scores: Tensor | None = None  # [writer, reader] (or [pos, writer, reader]) with ``contract``


def run(
    adapter: ModelAdapter,
    graph: Graph,
    plan: Plan | list[Plan],
    tokens: Tensor,
    *,
    embed: Tensor | None = None,
    grad: bool = False,
    keep_z: bool = False,
    check_sum: bool = False,
    writer_values: dict[str, Tensor] | None = None,
    contract: Tensor | None = None,
    per_position: bool = False,
    delta: Tensor | None = None,
    row_weights: Tensor | None = None,
) -> Capture:
    """One forward (and backward when ``grad``) inside :func:`graph.split_flags`.

    Captures every writer's residual contribution and, with ``grad``, the gradient of the metric
    (summed over the batch) at every reader input. ``writer_values`` replaces the value of writer
    hooks (``hook_embed``, ``attn.hook_z``, ``hook_mlp_out``) while letting the gradient flow
    through the live value (straight-through), as EAP-IG-activations needs.

    ``contract`` (the other run's writers, ``[batch, pos, writer, d_model]``; overwritten with
    Δ = other − this run's writers) makes the backward contract each reader's gradient with Δ as
    soon as it arrives, so no reader gradient is kept: the result's ``scores`` hold
    Σ_{batch,pos} Δ·∂m/∂reader for every edge (per position with ``per_position``), and its
    ``writers`` and ``grads`` are None. This is what keeps all-edge ``eap`` within the memory of
    one forward + backward.

    ``delta`` (a fixed Δ, ``[pos, writer, d_model]``) with ``row_weights`` (``[batch]``) does the
    same for EAP-IG: each reader's gradient is summed over the batch rows with the weights (the
    quadrature of the integral) and contracted with Δ in float64 as it arrives; no writer is
    captured."""
    b = tokens.shape[0] if embed is None else embed.shape[0]
    tokens = tokens.expand(b, -1)
    d = adapter.d_model
    pos = tokens.shape[1]
    dev, dt = adapter.device, adapter.dtype
    W, R = len(graph.writers), len(graph.readers)
    if contract is not None and (not grad or tuple(contract.shape) != (b, pos, W, d)):
        raise ValueError(f"contract needs grad=True and shape {(b, pos, W, d)}, got {tuple(contract.shape)}")
    box: dict[str, Tensor] = {}
    hooks: list[tuple[str, Callable]] = []
    if delta is not None and (not grad or contract is not None or row_weights is None or check_sum or keep_z):
        raise ValueError("delta needs grad=True and row_weights, and no contract, check_sum or keep_z")
    streamed = contract is not None or delta is not None
    # writers go straight into their slice of one buffer (no per-hook copies joined afterwards)
    writers = torch.zeros(b, pos, W, d, device=dev, dtype=dt) if not streamed else None
    rhooks = graph.reader_hooks()
    grads = torch.zeros(b, pos, R, d, device=dev, dtype=dt) if grad and not streamed else None
    scores = None
    if streamed:
        scores = torch.zeros(*((pos,) if per_position else ()), W, R, device=dev, dtype=torch.float64)
    # one scalar leaf added to every reader input: the backward reaches each input once, and a
    # hook on it takes that input's gradient (exactly x + 0.0 in the forward)
    zero = torch.zeros((), device=dev, dtype=dt, requires_grad=True) if grad else None
    wst = graph.writer_stage

    def grab(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            box[name] = x.detach()

        return fn

    def grab_writer(sl: slice) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            if contract is not None:  # Δ = other − here, straight into the caller's buffer
                contract[:, :, sl] -= G.as_heads(x.detach())
            else:
                writers[:, :, sl] = G.as_heads(x.detach())

        return fn

    def replace(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            v = writer_values[name]  # type: ignore[index]
            return x + (v.to(x.dtype) - x).detach()

        return fn

    def accumulate(dl: Tensor, gr: Tensor, n_w: int, sl: slice) -> None:
        """scores[:n_w, sl] += Σ_{batch,pos} Δ·gradient (per position with ``per_position``);
        ``dl`` [batch, pos, writer, d], ``gr`` [batch, pos, reader, d]."""
        if per_position:
            scores[:, :n_w, sl] += einsum(dl[:, :, :n_w].double(), gr.double(), "b p w d, b p r d -> p w r")  # type: ignore[index]
        else:
            scores[:n_w, sl] += torch.bmm(dl.flatten(0, 1)[:, :n_w], gr.flatten(0, 1).transpose(1, 2)).sum(0).double()  # type: ignore[index]

    def take(sl: slice) -> Callable:
        n_w = sum(1 for s in wst if s < graph.reader_stage[sl.start])  # writers in stage order

        def on_grad(g: Tensor) -> None:
            gh = G.as_heads(g)
            if grads is not None:
                grads[:, :, sl] = gh
            elif delta is not None:  # the quadrature over the rows first, then one contraction
                accumulate(delta[None], einsum(gh.double(), row_weights, "b p r d, b -> p r d")[None], n_w, sl)
            else:
                accumulate(contract, gh, n_w, sl)  # type: ignore[arg-type]

        def fn(x: Tensor, hook: Any) -> Tensor:
            # a fresh view (no copy) when the input already carries the gradient: only this
            # reader uses it, so its gradient is this reader's alone (x itself may be the
            # residual stream, shared with later layers)
            y = x.view_as(x) if x.requires_grad else x + zero
            y.register_hook(on_grad)
            return y

        return fn

    L = graph.n_layers
    if writer_values:
        for name in writer_values:
            hooks.append((name, replace(name)))
    if delta is None:
        for name, sl in graph.writer_hooks():
            hooks.append((name, grab_writer(sl)))
    if keep_z:
        hooks += [(G.z_hook(layer), grab(G.z_hook(layer))) for layer in range(L)]
    if check_sum:
        hooks += [(G.attn_out(layer), grab(G.attn_out(layer))) for layer in range(L)]
    if grad:
        # the scalar enters at the embedding too, so every reader input downstream carries it
        hooks.append((G.EMBED, lambda x, hook: x + zero))
        hooks += [(name, take(sl)) for name, _, sl in rhooks]
    # weights frozen: a backward to the inputs only keeps no activation for weight gradients
    with G.split_flags(adapter), adapter.frozen_weights(), (torch.enable_grad() if grad else torch.no_grad()):
        m = metric(adapter, plan, tokens, embed, hooks)
        if grad:
            torch.autograd.grad(m.sum(), [zero])  # type: ignore[list-item]
    if check_sum:
        assert writers is not None
        at = dict(graph.writer_hooks())
        G.check_head_sum({**box, **{G.result(k): writers[:, :, at[G.result(k)]] for k in range(L)}}, L)
    z = [box[G.z_hook(layer)] for layer in range(L)] if keep_z else None
    return Capture(writers, grads, m.detach(), z, scores=scores)


def check_gap(m_clean: float, m_corrupt: float, what: str = "") -> None:
    if not abs(m_clean - m_corrupt) > 1e-9 * max(1.0, abs(m_clean)):
        raise TargetError(
            f"The clean and corrupted prompts give the same metric ({m_clean:.6g}){what}, so "
            "the recovered fraction (faithfulness) is undefined. Choose a corruption that changes "
            "the answer, or a metric that separates the pair (e.g. target=..., contrast=...)."
        )
