"""Small helpers every method family shares: the call context, batching under a memory cap,
target values and gradients with respect to the token embeddings."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..tl import fastpath, prefix
from ..tl.adapter import ModelAdapter
from ..errors import MethodError
from ..progress import progress
from ..targets import Plan

REDUCTIONS = ("sum", "l2", "l1")


@dataclass
class Context:
    """Everything a method needs about one prompt and one target."""

    adapter: ModelAdapter
    plan: Plan
    memory_mb: float = 2048.0
    batch_size: int | None = None
    seed: int = 0
    quiet: bool = True
    # Positions whose embedding is never perturbed and whose score is 0 (the BOS token).
    fixed: Bool[Tensor, " pos"] | None = None
    _input_embed: Tensor | None = field(default=None, repr=False)

    @property
    def tokens(self) -> Int[Tensor, "1 pos"]:
        return self.plan.tokens

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def free(self) -> Bool[Tensor, " pos"]:
        """Positions that are attributed."""
        if self.fixed is None:
            return torch.ones(self.n_pos, dtype=torch.bool, device=self.tokens.device)
        return ~self.fixed

    def input_embed(self) -> Float[Tensor, "1 pos d_model"]:
        if self._input_embed is None:
            self._input_embed = self.adapter.embed(self.tokens)
        return self._input_embed

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) + offset)
        return g

    def max_batch(self, with_grad: bool = True, hook_free: bool = True) -> int:
        """How many sequences fit in one forward(+backward) under ``memory_mb``.

        ``hook_free``: the passes carry no mechattr hook (gradient and perturbation passes); on
        the SDPA fast path their attention costs no ``n x n`` term, so the estimate is linear in
        the input length per sequence."""
        if self.batch_size is not None:
            return max(1, int(self.batch_size))
        a = self.adapter
        per_token = a.activation_bytes_per_token() + a.attention_bytes_per_token(self.n_pos, hook_free=hook_free)
        if not with_grad:
            per_token = per_token // 4
        per_seq = max(1, per_token * self.n_pos)
        return max(1, int(self.memory_mb * 2**20 // per_seq))

    def batches(self, n: int, with_grad: bool = True) -> Iterator[slice]:
        step = self.max_batch(with_grad)
        for i in range(0, n, step):
            yield slice(i, min(n, i + step))

    def values(
        self,
        embeds: Float[Tensor, "n pos d_model"] | None = None,
        tokens: Int[Tensor, "n pos"] | None = None,
    ) -> Float[Tensor, "n rows"]:
        """Target values without gradients, batched."""
        if embeds is None and tokens is None:
            embeds = self.input_embed()
        n = embeds.shape[0] if embeds is not None else tokens.shape[0]
        out = []
        # Token-replacement probes (ReAGent) share the unperturbed prefix: reuse it.
        reuse = prefix.reuse(self) if tokens is not None and tokens.shape[-1] == self.n_pos else contextlib.nullcontext()
        # Embedding evaluations are the f(x), f(baseline) of completeness checks: never autocast.
        exact = fastpath.full_precision() if tokens is None else contextlib.nullcontext()
        with torch.no_grad(), reuse, exact:
            for sl in self.batches(n, with_grad=False):
                toks = tokens[sl] if tokens is not None else self.tokens.expand(sl.stop - sl.start, -1)
                emb = embeds[sl] if embeds is not None else None
                out.append(self.plan.evaluate(self.adapter, toks, emb))
        return torch.cat(out, dim=0)


def reduce_hidden(x: Float[Tensor, "... d_model"], how: str) -> Float[Tensor, "..."]:
    """Token score from a per-dimension map: signed sum (keeps completeness) or a norm."""
    if how == "sum":
        return x.sum(-1)
    if how == "l2":
        return x.norm(dim=-1)
    if how == "l1":
        return x.abs().sum(-1)
    raise MethodError(f"Unknown reduction {how!r}; choose one of {list(REDUCTIONS)}.")


def check_reduce(how: str) -> str:
    if how not in REDUCTIONS:
        raise MethodError(f"Unknown reduction {how!r}; choose one of {list(REDUCTIONS)}.")
    return how


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MethodError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def grad_map(
    ctx: Context,
    n_points: int,
    make_points: Callable[[slice], Float[Tensor, "b pos d_model"]],
    per_point: Callable[[slice, Float[Tensor, "rows b pos d_model"]], None],
) -> Float[Tensor, "n rows"]:
    """Forward ``n_points`` embedding inputs in batches (``make_points(slice)`` builds each batch,
    so long paths are never materialised whole) and hand ``per_point(slice, grads)`` the gradient
    of every target row at those points. One forward per batch is shared by all rows (one
    backward each). Returns the target values at the points."""
    rows = ctx.plan.n_rows
    vals = []
    chunks = list(ctx.batches(n_points))
    for sl in progress(chunks, desc="gradient points (batches)", quiet=ctx.quiet or len(chunks) < 2):
        emb = make_points(sl).detach().clone().requires_grad_(True)
        toks = ctx.tokens.expand(emb.shape[0], -1)
        with torch.enable_grad(), ctx.adapter.frozen_weights():
            v = ctx.plan.evaluate(ctx.adapter, toks, emb)
            grads = []
            for r in range(rows):
                (g,) = torch.autograd.grad(v[:, r].sum(), emb, retain_graph=r < rows - 1)
                grads.append(g)
        per_point(sl, torch.stack(grads))
        vals.append(v.detach())
        del v, emb, grads
    return torch.cat(vals, dim=0)


def mask_fixed(ctx: Context, scores: Tensor) -> Tensor:
    """Zero the scores of positions that are not attributed (their 'src' axis is last)."""
    if ctx.fixed is None or not bool(ctx.fixed.any()):
        return scores
    return scores.masked_fill(ctx.fixed.to(scores.device), 0.0)


def rule_points(n_steps: int, rule: str) -> tuple[Tensor, Tensor]:
    """Interpolation coefficients alpha in [0, 1] and their quadrature weights (sum to 1)."""
    if rule in ("gausslegendre", "gauss_legendre", "gauss-legendre"):
        import numpy as np

        x, w = np.polynomial.legendre.leggauss(n_steps)
        return torch.tensor(0.5 * (x + 1), dtype=torch.float64), torch.tensor(0.5 * w, dtype=torch.float64)
    if rule in ("riemann_trapezoid", "trapezoid"):
        if n_steps < 2:
            raise MethodError("The trapezoid rule needs n_steps >= 2.")
        a = torch.linspace(0, 1, n_steps, dtype=torch.float64)
        w = torch.full((n_steps,), 1.0 / (n_steps - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n_steps - 1)
        return a, w
    k = torch.arange(n_steps, dtype=torch.float64)
    w = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    if rule in ("riemann_left", "left"):
        return k / n_steps, w
    if rule in ("riemann_right", "right"):
        return (k + 1) / n_steps, w
    if rule in ("riemann_middle", "middle", "riemann"):
        return (k + 0.5) / n_steps, w
    raise MethodError(
        f"Unknown integration rule {rule!r}; choose gausslegendre, riemann_middle, riemann_left, "
        "riemann_right, riemann_trapezoid, or adaptive (integrated gradients only)."
    )


def completeness(
    attr_sum: Float[Tensor, " rows"], f_x: Float[Tensor, " rows"], f_b: Float[Tensor, " rows"]
) -> dict[str, Any]:
    """|sum of attributions - (f(x) - f(baseline))|, absolute and relative to |f(x) - f(b)|."""
    delta = (f_x - f_b).double()
    err = (attr_sum.double() - delta).abs()
    rel = err / delta.abs().clamp_min(1e-12)
    return {
        "completeness_error": float(err.max()),
        "completeness_error_per_target": [float(e) for e in err],
        "completeness_relative_error": float(rel.max()),
        "f_input": [float(v) for v in f_x],
        "f_baseline": [float(v) for v in f_b],
    }


__all__: Sequence[str] = [
    "Context",
    "grad_map",
    "reduce_hidden",
    "rule_points",
    "completeness",
    "mask_fixed",
]
