"""Which attribution methods ``explain`` runs, chosen by budget.

- ``fast``: methods that cost about one backward pass or one batch of forwards: input × gradient,
  occlusion (leave-one-out), and the modified-backward methods (AttnLRP, CP-LRP, GIM) when they are
  registered. Those are looked up in the registry at run time, so they join as soon as they exist.
- ``thorough``: ``fast`` plus integrated gradients, SHAP (exact Shapley values when there are few
  tokens, else kernel SHAP) and attention rollout / attention flow.

Perturbation methods use the same replacement as the checks, so "deleting a token" means the same
thing in the method and in the deletion curve it is judged by.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import InputError, MechattrError
from ..registry import get_method

BUDGETS = ("fast", "thorough")
# The one-backward rule-based methods (AttnLRP, CP-LRP, GIM); looked up in the registry, so a
# build without one of them still runs.
OPTIONAL_FAST = ("attnlrp", "cp_lrp", "gim")
EXACT_SHAPLEY_MAX = 8  # 2^8 coalitions: exact Shapley values are cheaper than a good kernel SHAP fit


@dataclass
class MethodChoice:
    """One method to run: a registered ``name`` with ``params``, or a callable (tests, users)."""

    label: str
    name: str | None
    params: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = None
    why: str = ""


def registered(name: str) -> str | None:
    """The canonical name of a registered method, or None when it does not exist (yet)."""
    try:
        return get_method(name).name
    except MechattrError:
        return None


def select_methods(budget: str, n_free: int, replacement: str) -> list[MethodChoice]:
    if budget not in BUDGETS:
        raise InputError(f"budget must be one of {list(BUDGETS)}, got {budget!r}.")
    out = [
        MethodChoice("input_x_gradient", "input_x_gradient", {}, why="one backward pass"),
        MethodChoice("occlusion", "occlusion", {"replacement": replacement}, why="one forward per token"),
    ]
    seen = set()
    for cand in OPTIONAL_FAST:
        name = registered(cand)
        if name is not None and name not in seen:
            seen.add(name)
            out.append(MethodChoice(name, name, {}, why="one modified backward pass"))
    if budget == "thorough":
        out.append(MethodChoice("integrated_gradients", "integrated_gradients", {}, why="path integral; baseline sensitivity reported"))
        if n_free <= EXACT_SHAPLEY_MAX:
            out.append(MethodChoice("shapley", "shapley", {"replacement": replacement}, why=f"exact ({n_free} tokens ≤ {EXACT_SHAPLEY_MAX})"))
        else:
            out.append(MethodChoice("kernel_shap", "kernel_shap", {"replacement": replacement}, why=f"sampled ({n_free} tokens > {EXACT_SHAPLEY_MAX})"))
        out.append(MethodChoice("attention_rollout", "attention_rollout", {}, why="attention only"))
        out.append(MethodChoice("attention_flow", "attention_flow", {}, why="attention only"))
    return out


def user_methods(methods: Any) -> list[MethodChoice]:
    """``methods=`` given explicitly: names, ``(name, params)`` or ``(label, callable)`` pairs."""
    if isinstance(methods, (str, tuple)) or callable(methods):
        methods = [methods]
    out: list[MethodChoice] = []
    for m in methods:
        if isinstance(m, str):
            name = get_method(m).name
            out.append(MethodChoice(name, name, {}, why="chosen by the caller"))
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and isinstance(m[1], dict):
            name = get_method(m[0]).name
            out.append(MethodChoice(name, name, dict(m[1]), why="chosen by the caller"))
        elif isinstance(m, tuple) and len(m) == 2 and isinstance(m[0], str) and callable(m[1]):
            out.append(MethodChoice(m[0], None, {}, fn=m[1], why="a callable given by the caller"))
        else:
            raise InputError(
                "methods= takes registered names, (name, params) or (label, callable) pairs; "
                f"got {m!r}."
            )
    labels = [c.label for c in out]
    if not out or len(set(labels)) != len(labels):
        raise InputError(f"methods= needs at least one method, each label once; got {labels}.")
    return out
