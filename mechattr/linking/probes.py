"""Linear probes as attribution targets.

A probe reads the activation at one hook and one position and returns ``act · Wᵀ + b`` (one logit
per class). Its plan runs the model only up to the probe's hook (``adapter.run_until``), so every
attribution method explains the probe logit with the same machinery as a next-token target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from ..tl.adapter import ModelAdapter
from ..errors import TargetError
from ..targets import Plan, Target, resolve_position


def _as_tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().float()
    try:
        return torch.as_tensor(x, dtype=torch.float32)
    except Exception as e:
        raise TargetError(f"The probe {what} must be a tensor or array, got {type(x).__name__}.") from e


@dataclass
class ProbePlan(Plan):
    tokens: Tensor
    labels: list[str]
    positions: list[int]
    token_ids: list[int | None]
    hook: str
    weight: Tensor
    bias: Tensor
    description: str = ""
    read_position: int = 0

    def evaluate(self, adapter, tokens, embed=None, fwd_hooks=()):
        act = adapter.run_until(tokens, self.hook, embed=embed, fwd_hooks=fwd_hooks)
        # positions, not read_position: replacement='delete' shortens the input and shifts positions.
        x = act[:, self.positions[0]].reshape(act.shape[0], -1)
        w = self.weight.to(x)
        return x @ w.T + self.bias.to(x)


class LinearProbe(Target):
    """``LinearProbe(weight [n_classes, d] or [d], bias, hook, position)``: explain the probe
    logit(s) read at ``hook`` and ``position`` (default: the last prompt token).

    Activations with head axes (``hook_z``: ``[pos, head, d_head]``) are flattened after the
    position, so ``d`` is then ``n_heads * d_head``."""

    def __init__(
        self,
        weight: Any,
        bias: Any = None,
        hook: str = "",
        position: int | None = None,
        label: str | Sequence[str] = "probe",
    ) -> None:
        w = _as_tensor(weight, "weight")
        if w.dim() == 1:
            w = w[None]
        if w.dim() != 2 or w.shape[0] == 0:
            raise TargetError(
                f"The probe weight must have shape [n_classes, d] or [d], got {tuple(w.shape)}."
            )
        b = torch.zeros(w.shape[0]) if bias is None else _as_tensor(bias, "bias").reshape(-1)
        if b.numel() == 1 and w.shape[0] > 1 and bias is not None and _as_tensor(bias, "bias").dim() == 0:
            b = b.expand(w.shape[0]).clone()
        if b.shape[0] != w.shape[0]:
            raise TargetError(
                f"The probe bias has {b.shape[0]} entries but the weight has {w.shape[0]} rows "
                "(one bias per class)."
            )
        if not isinstance(hook, str) or not hook:
            raise TargetError("A probe needs the hook it reads, e.g. hook='blocks.1.hook_resid_post'.")
        self.weight, self.bias, self.hook, self.position = w, b, hook, position
        if isinstance(label, str):
            self.labels = [label] if w.shape[0] == 1 else [f"{label}[{i}]" for i in range(w.shape[0])]
        else:
            self.labels = [str(s) for s in label]
            if len(self.labels) != w.shape[0]:
                raise TargetError(f"{len(self.labels)} labels for a probe with {w.shape[0]} classes.")

    def __repr__(self) -> str:
        return (
            f"LinearProbe(classes={self.weight.shape[0]}, d={self.weight.shape[1]}, "
            f"hook={self.hook!r}, position={self.position})"
        )

    @classmethod
    def from_linear(
        cls, linear: torch.nn.Linear, hook: str, position: int | None = None, label: Any = "probe"
    ) -> "LinearProbe":
        """From a trained ``torch.nn.Linear(d, n_classes)`` (weights are copied)."""
        if not isinstance(linear, torch.nn.Linear):
            raise TargetError(f"from_linear needs a torch.nn.Linear, got {type(linear).__name__}.")
        bias = None if linear.bias is None else linear.bias
        return cls(linear.weight, bias, hook, position, label)

    @classmethod
    def from_sklearn(
        cls, coef_: Any, intercept_: Any, hook: str, position: int | None = None, label: Any = "probe"
    ) -> "LinearProbe":
        """From scikit-learn ``coef_`` ([1, d] binary or [n_classes, d]) and ``intercept_``."""
        return cls(coef_, intercept_, hook, position, label)

    @classmethod
    def from_probe(cls, probe: Any, position: int | None = None) -> "LinearProbe":
        """From a probe object with ``W [d, n_classes]``, ``b``, ``hook`` and optionally
        ``classes`` (the layout of :func:`mechattr.zoo.load_probe`; its position "last" is the
        default position here)."""
        for attr in ("W", "b", "hook"):
            if not hasattr(probe, attr):
                raise TargetError(f"from_probe needs W [d, n_classes], b and hook; {type(probe).__name__} lacks {attr!r}.")
        classes = getattr(probe, "classes", None)
        label: Any = [str(c) for c in classes] if classes else "probe"
        return cls(torch.as_tensor(probe.W).T, probe.b, probe.hook, position, label)

    def plan(self, adapter: ModelAdapter, prompt_tokens: Tensor) -> ProbePlan:
        adapter.check_hook(self.hook)
        pos = resolve_position(self.position, prompt_tokens.shape[-1])
        with torch.no_grad():
            act = adapter.run_until(prompt_tokens, self.hook)
        d = int(act[0, pos].numel())
        if d != self.weight.shape[1]:
            raise TargetError(
                f"The probe expects {self.weight.shape[1]} features but {self.hook!r} gives {d} "
                f"per position (activation shape {tuple(act.shape[2:])}). Check the hook name or "
                "the probe's orientation (weight is [n_classes, d])."
            )
        return ProbePlan(
            tokens=prompt_tokens,
            labels=list(self.labels),
            positions=[pos] * len(self.labels),
            token_ids=[None] * len(self.labels),
            hook=self.hook,
            weight=self.weight.to(act.device),
            bias=self.bias.to(act.device),
            description=f"linear probe logit at {self.hook} position {pos}",
            read_position=pos,
        )

    def score(self, model: Any, text: Any) -> Float[Tensor, " classes"]:
        """The probe logit(s) on ``text`` (no gradients)."""
        from ..api import resolve

        adapter, plan, _ = resolve(model, text, self)
        with torch.no_grad(), adapter.guard():
            return plan.evaluate(adapter, plan.tokens)[0]


__all__ = ["LinearProbe", "ProbePlan"]


def fit_logistic(
    x: Float[Tensor, "n d"], y: Float[Tensor, " n"], *, steps: int = 300, l2: float = 1e-2, seed: int = 0
) -> tuple[Float[Tensor, " d"], Float[Tensor, ""]]:
    """Binary logistic regression on standardised features (Adam, L2 penalty), returned as
    ``(weight, bias)`` on the raw features, so ``LinearProbe(weight, bias, hook=...)`` reads the
    residual stream directly. For probes on a handful of sentences, where d >> n."""
    x, y = x.float(), y.float()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(x.shape[1], generator=g)).requires_grad_(True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w**2).sum()
            loss.backward()
            opt.step()
    w, b = w.detach(), b.detach()
    return w / sd, b - (w * mu / sd).sum()
