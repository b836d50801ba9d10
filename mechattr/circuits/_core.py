"""Shared machinery: clean/corrupt pairs resolved against a target, and forward passes that
capture every writer's output and every reader input's gradient in one forward + backward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..errors import InputError, MethodError, TargetError
from ..linking.heads import evaluate_hooked
from ..targets import Plan
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
        hk_ = list(hooks)
        if embed is not None:
            from ..targets import replace_embed

            hk_.insert(0, replace_embed(embed))
        with adapter.hooks(fwd_hooks=hk_):
            logits = adapter.model(tokens)
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
    writers: Float[Tensor, "batch pos writer d_model"]
    grads: Float[Tensor, "batch pos reader d_model"] | None
    metric: Float[Tensor, " batch"]
    z: list[Tensor] | None = None  # per layer [batch, pos, head, d_head], when asked
    attn_out: dict[str, Tensor] | None = None


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
) -> Capture:
    """One forward (and backward when ``grad``) inside :func:`graph.split_flags`.

    Captures every writer's residual contribution and, with ``grad``, the gradient of the metric
    (summed over the batch) at every reader input. ``writer_values`` replaces the value of writer
    hooks (``hook_embed``, ``attn.hook_z``, ``hook_mlp_out``) while letting the gradient flow
    through the live value (straight-through), as EAP-IG-activations needs."""
    b = tokens.shape[0] if embed is None else embed.shape[0]
    tokens = tokens.expand(b, -1)
    box: dict[str, Tensor] = {}
    taps: dict[str, Tensor] = {}
    hooks: list[tuple[str, Callable]] = []

    def grab(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            box[name] = x.detach()

        return fn

    def replace(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            v = writer_values[name]  # type: ignore[index]
            return x + (v.to(x.dtype) - x).detach()

        return fn

    def tap(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            d = torch.zeros_like(x, requires_grad=True)
            taps[name] = d
            return x + d

        return fn

    L = graph.n_layers
    if writer_values:
        for name in writer_values:
            hooks.append((name, replace(name)))
    for name, _ in graph.writer_hooks():
        hooks.append((name, grab(name)))
    if keep_z:
        hooks += [(G.z_hook(layer), grab(G.z_hook(layer))) for layer in range(L)]
    if check_sum:
        hooks += [(G.attn_out(layer), grab(G.attn_out(layer))) for layer in range(L)]
    rhooks = graph.reader_hooks()
    if grad:
        hooks += [(name, tap(name)) for name, _, _ in rhooks]
    with G.split_flags(adapter), (torch.enable_grad() if grad else torch.no_grad()):
        m = metric(adapter, plan, tokens, embed, hooks)
        grads = None
        if grad:
            names = [n for n, _, _ in rhooks if n in taps]
            gs = torch.autograd.grad(m.sum(), [taps[n] for n in names], allow_unused=True) if names else ()
            got = {n: (torch.zeros_like(taps[n]) if g is None else g) for n, g in zip(names, gs)}
    d = adapter.d_model
    pos = tokens.shape[1]
    dev, dt = adapter.device, adapter.dtype

    def zeros(k: int) -> Tensor:
        return torch.zeros(b, pos, k, d, device=dev, dtype=dt)

    parts = []
    for name, sl in graph.writer_hooks():
        x = box.get(name)
        parts.append(zeros(sl.stop - sl.start) if x is None else G.as_heads(x).expand(b, -1, -1, -1))
    writers = torch.cat(parts, dim=2)
    if grad:
        gp = []
        for name, _, sl in rhooks:
            x = got.get(name)
            gp.append(zeros(sl.stop - sl.start) if x is None else G.as_heads(x))
        grads = torch.cat(gp, dim=2)
    if check_sum:
        G.check_head_sum(box, L)
    z = [box[G.z_hook(layer)] for layer in range(L)] if keep_z else None
    return Capture(writers, grads, m.detach(), z)


def check_gap(m_clean: float, m_corrupt: float, what: str = "") -> None:
    if not abs(m_clean - m_corrupt) > 1e-9 * max(1.0, abs(m_clean)):
        raise TargetError(
            f"The clean and corrupted prompts give the same metric ({m_clean:.6g}){what}, so "
            "the recovered fraction (faithfulness) is undefined. Choose a corruption that changes "
            "the answer, or a metric that separates the pair (e.g. target=..., contrast=...)."
        )
