"""Hook names and the hook helpers every mechattr module shares (the one place that spells them).

Names: the ones both TransformerLens lines accept (``hook_embed``, ``blocks.{l}.hook_resid_pre``,
``blocks.{l}.attn.hook_pattern`` ...). Inside a callback TL 4 reports the canonical name
(``embed.hook_out``, ``blocks.{l}.hook_in``), so the helpers here key what they store by the name
that was asked for, never by ``hook.name``.

Helpers (after circuit-tracer's one-object-owns-its-hooks design, Ameisen et al. 2025):

* :class:`Recorder` -- "keep this activation": forward hooks that store what passes a hook point.
* :class:`Taps` -- gradient taps: the gradient of a value at a hook point without detaching it.
* :func:`capture` -- one no-grad forward that returns the activations at some hook points.
* :func:`frozen_hooks` -- attention patterns and norm scales replaced by their clean values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

if TYPE_CHECKING:
    from .adapter import ModelAdapter

Hook = tuple[str, Callable[..., Any]]

# ----- names -------------------------------------------------------------------------------------
EMBED = "hook_embed"
LN_FINAL_SCALE = "ln_final.hook_scale"


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def attn_pattern(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def attn_v(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def attn_z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def ln_scale(layer: int, which: int) -> str:
    """``blocks.{layer}.ln{which}.hook_scale`` (``which`` 1: before attention, 2: before the MLP)."""
    return f"blocks.{layer}.ln{which}.hook_scale"


def attn_hook(layer: int, kind: str) -> str:
    """``blocks.{layer}.attn.hook_{kind}`` (``q``, ``k``, ``v``, ``z``, ``pattern``, ``attn_scores``)."""
    return f"blocks.{layer}.attn.hook_{kind}"


def mlp_hook(layer: int, kind: str) -> str:
    """``blocks.{layer}.mlp.hook_{kind}`` (``pre``, ``post``, ``pre_linear`` for gated MLPs)."""
    return f"blocks.{layer}.mlp.hook_{kind}"


def q_in(layer: int) -> str:
    """The query input of every head of ``layer`` (TL's split-input hooks, ``use_split_qkv_input``)."""
    return f"blocks.{layer}.hook_q_input"


def k_in(layer: int) -> str:
    return f"blocks.{layer}.hook_k_input"


def v_in(layer: int) -> str:
    return f"blocks.{layer}.hook_v_input"


def mlp_in(layer: int) -> str:
    """The MLP's input (``use_hook_mlp_in``)."""
    return f"blocks.{layer}.hook_mlp_in"


def attn_result(layer: int) -> str:
    """Each head's output in the residual basis (``use_attn_result``)."""
    return f"blocks.{layer}.attn.hook_result"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def replace_embed(embed: Tensor) -> Hook:
    """A hook that hands the forward ``embed`` instead of the token embedding."""
    return (EMBED, lambda x, hook: embed)


# ----- recording ---------------------------------------------------------------------------------
class Recorder:
    """Forward hooks that keep activations, keyed by the name asked for (or a key of the caller's).

    Each hook hands its input on unchanged *as the returned tensor*: a TL 4 bridge gives hooks a
    reshaped view and continues with what the hook returns, so a stored tensor stays on the
    autograd path and gradients with respect to it can be taken (``detach=False``). With
    ``detach=True`` it is stored detached (no graph is kept alive); ``clone=True`` also copies it
    (safe against a later in-place change of the same storage)."""

    def __init__(self, detach: bool = True, clone: bool = False) -> None:
        self.detach = detach
        self.clone = clone
        self.acts: dict[Any, Tensor] = {}
        self._wanted: list[Hook] = []

    def hook(self, name: str, key: Any = None) -> Hook:
        """``(name, fn)``: ``fn`` stores the activation at ``name`` under ``key`` (default: name)."""
        k = name if key is None else key

        def fn(x: Tensor, hook: Any) -> Tensor:
            kept = x.detach() if self.detach else x
            self.acts[k] = kept.clone() if self.clone else kept
            return x

        h = (name, fn)
        self._wanted.append(h)
        return h

    def hooks(self, names: Sequence[str] = ()) -> list[Hook]:
        """Hooks for ``names`` (added to those already made with :meth:`hook`)."""
        for n in names:
            self.hook(n)
        return list(self._wanted)

    def __getitem__(self, key: Any) -> Tensor:
        return self.acts[key]

    def __contains__(self, key: Any) -> bool:
        return key in self.acts


def capture(
    adapter: "ModelAdapter",
    tokens: Int[Tensor, "batch pos"],
    names: Sequence[str],
    embed: Float[Tensor, "batch pos d_model"] | None = None,
) -> dict[str, Tensor]:
    """The activations at ``names`` (detached) from one no-grad forward of ``tokens`` (with the
    token embedding replaced by ``embed`` if given)."""
    rec = Recorder(detach=True)
    hooks = rec.hooks(names)
    if embed is not None:
        hooks.insert(0, replace_embed(embed))
    with torch.no_grad(), adapter.hooks(fwd_hooks=hooks):
        adapter.model(tokens)
    return dict(rec.acts)


class Taps:
    """Gradient taps: a forward hook adds a zero tensor that requires grad to an activation, so
    ``torch.autograd.grad(value, taps.deltas(names))`` is the gradient at that activation while
    the gradient keeps flowing to everything upstream. Works the same on TL 3 and TL 4 (a bridge
    hands hooks reshaped views whose ``.grad`` never fills; a returned tensor is used)."""

    def __init__(self, names: Sequence[str], keep: bool = True) -> None:
        self.names = list(names)
        self.keep = keep
        self.acts: dict[str, Tensor] = {}
        self.delta: dict[str, Tensor] = {}

    def hook(self, name: str) -> Callable[[Tensor, Any], Tensor]:
        def fn(x: Tensor, hook: Any) -> Tensor:
            d = torch.zeros_like(x, requires_grad=True)
            self.delta[name] = d
            if self.keep:
                self.acts[name] = x.detach()
            return x + d

        return fn

    def hooks(self) -> list[Hook]:
        return [(n, self.hook(n)) for n in self.names]

    def grads(self, value: Tensor, retain_graph: bool = True) -> dict[str, Tensor]:
        names = [n for n in self.names if n in self.delta]
        gs = torch.autograd.grad(
            value, [self.delta[n] for n in names], retain_graph=retain_graph, allow_unused=True
        )
        return {n: (torch.zeros_like(self.delta[n]) if g is None else g) for n, g in zip(names, gs)}


# ----- linearisation -----------------------------------------------------------------------------
def freeze_names(adapter: "ModelAdapter") -> list[str]:
    """Attention patterns and norm scales of every layer (whichever the model has)."""
    names = []
    for layer in range(adapter.n_layers):
        names += [attn_pattern(layer), ln_scale(layer, 1), ln_scale(layer, 2)]
    names.append(LN_FINAL_SCALE)
    return [n for n in names if adapter.has_hook(n)]


def frozen_hooks(
    adapter: "ModelAdapter", tokens: Int[Tensor, "batch pos"], embed: Tensor | None = None
) -> list[Hook]:
    """Hooks that replace attention patterns and norm scales by their detached clean values.

    Circuit-tracer style freezing (Ameisen et al. 2025, "Circuit Tracing"): with patterns
    and scales constant, attention and normalisation are linear in the residual stream. MLPs
    stay nonlinear (circuit-tracer replaces them by transcoders; mechattr does not), so
    gradients through the frozen model are first-order effects, linear only where no MLP lies
    on the path. The clean values come from one no-grad
    forward on ``tokens`` (with ``embed`` if given); the hooks are for batches of that input."""
    names = freeze_names(adapter)
    box = capture(adapter, tokens, names, embed)

    def make(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            v = box[name]
            return v.expand(x.shape[0], *v.shape[1:]) if v.shape[0] != x.shape[0] else v

        return fn

    return [(n, make(n)) for n in names]


__all__ = [
    "EMBED", "LN_FINAL_SCALE", "resid_pre", "resid_post", "mlp_out", "attn_pattern", "attn_v", "attn_z",
    "ln_scale", "replace_embed", "Recorder", "capture", "Taps", "freeze_names", "frozen_hooks",
]
