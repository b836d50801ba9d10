"""Token × head contribution maps, and the hook helpers the linking modules share.

A head's output at a destination position ``dst`` is a sum over source positions
(Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits")::

    result_h[dst] = Σ_src  pattern_h[dst, src] · v_h[src] · W_O[h]

so each source position contributes one vector ``piece_h[dst, src]`` to the residual stream, and
summed over sources the pieces are exactly ``z_h[dst] · W_O[h]`` (``b_O`` is shared by all heads
and belongs to no source). Each piece is scored against the target:

* ``mode="gradient"``: ``piece · ∂target/∂(head output at dst)`` — the first-order effect of the
  piece through every later path.
* ``mode="direct"``: ``piece · ∂target/∂resid_final[dst]`` with the final norm's scale frozen at
  its clean value. With the scale frozen the logits are affine in the final residual, so for
  ``kind="logit"``/``"logit_diff"`` targets this is exactly ``LN(piece) · W_U[:, token]`` (the
  direct logit attribution of the piece); for log-prob targets it is that logit effect taken
  through the log-softmax at first order.

Grouped-query attention: ``hook_v`` carries ``n_kv_heads`` heads; query head ``h`` reads kv head
``h // (n_heads / n_kv_heads)`` (the repeat-interleave layout of both HF and TransformerLens).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from einops import einsum, repeat
from jaxtyping import Float
from torch import Tensor

from ..tl.adapter import EMBED_HOOK, ModelAdapter
from ..errors import MethodError
from ..methods._common import Context, mask_fixed
from ..registry import MethodOutput, register
from ..targets import LogitPlan, Plan, _score_logits

MODES = ("gradient", "direct")


# ----- shared hook helpers -----------------------------------------------------------------------
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

    def hooks(self) -> list[tuple[str, Callable]]:
        return [(n, self.hook(n)) for n in self.names]

    def grads(self, value: Tensor, retain_graph: bool = True) -> dict[str, Tensor]:
        names = [n for n in self.names if n in self.delta]
        gs = torch.autograd.grad(
            value, [self.delta[n] for n in names], retain_graph=retain_graph, allow_unused=True
        )
        return {n: (torch.zeros_like(self.delta[n]) if g is None else g) for n, g in zip(names, gs)}


def capture(names: Sequence[str], box: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    """Forward hooks that store detached activations under our own key (TL 4 reports canonical
    names inside callbacks, so the closure carries the name we asked for)."""

    def make(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> None:
            box[name] = x.detach()

        return fn

    return [(n, make(n)) for n in names]


def evaluate_hooked(
    adapter: ModelAdapter,
    plan: Plan,
    tokens: Tensor,
    embed: Tensor | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
) -> Float[Tensor, "batch rows"]:
    """``plan.evaluate``, except that a logit target runs the whole forward (final norm and
    unembedding included) inside the hooks. ``adapter.logits`` applies ``ln_final`` after its
    hooks are gone, so a hook on ``ln_final.hook_scale`` (freezing the final norm) would
    silently not apply there."""
    if not isinstance(plan, LogitPlan):
        return plan.evaluate(adapter, tokens, embed, fwd_hooks=fwd_hooks)
    hooks = list(fwd_hooks)
    if embed is not None:
        hooks.insert(0, (EMBED_HOOK, lambda x, hook: embed))
    with adapter.hooks(fwd_hooks=hooks):
        logits = adapter.model(tokens)
    cols = [
        _score_logits(logits[:, p], plan.kind, t, f)
        for p, t, f in zip(plan.positions, plan.token_ids, plan.foil_ids)
    ]
    return torch.stack(cols, dim=-1)


def freeze_names(adapter: ModelAdapter) -> list[str]:
    """Attention patterns and norm scales of every layer (whichever the model has)."""
    names = []
    for layer in range(adapter.n_layers):
        names += [
            f"blocks.{layer}.attn.hook_pattern",
            f"blocks.{layer}.ln1.hook_scale",
            f"blocks.{layer}.ln2.hook_scale",
        ]
    names.append("ln_final.hook_scale")
    return [n for n in names if adapter.has_hook(n)]


def frozen_hooks(
    adapter: ModelAdapter, tokens: Tensor, embed: Tensor | None = None
) -> list[tuple[str, Callable]]:
    """Hooks that replace attention patterns and norm scales by their detached clean values.

    Circuit-tracer style freezing (Ameisen et al. 2025, "Circuit Tracing"): with patterns
    and scales constant, attention and normalisation are linear in the residual stream. MLPs
    stay nonlinear (circuit-tracer replaces them by transcoders; mechattr does not), so
    gradients through the frozen model are first-order effects, linear only where no MLP lies
    on the path. The clean values come from one no-grad
    forward on ``tokens`` (with ``embed`` if given); the hooks are for batches of that input."""
    names = freeze_names(adapter)
    box: dict[str, Tensor] = {}
    hooks = capture(names, box)
    if embed is not None:
        hooks.insert(0, ("hook_embed", lambda x, hook: embed))
    with torch.no_grad(), adapter.hooks(fwd_hooks=hooks):
        adapter.model(tokens)

    def make(name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            v = box[name]
            return v.expand(x.shape[0], *v.shape[1:]) if v.shape[0] != x.shape[0] else v

        return fn

    return [(n, make(n)) for n in names]


# ----- token × head ------------------------------------------------------------------------------
def kv_to_q(v: Float[Tensor, "batch pos kv d_head"], n_heads: int) -> Float[Tensor, "batch pos head d_head"]:
    """Give every query head its kv head (grouped-query attention); identity when kv == heads."""
    kv = v.shape[2]
    if kv == n_heads:
        return v
    if n_heads % kv:
        raise MethodError(f"{n_heads} query heads cannot share {kv} key/value heads evenly.")
    return repeat(v, "b p kv d -> b p (kv g) d", g=n_heads // kv)


def head_pieces(
    pattern: Float[Tensor, "head dst src"],
    v: Float[Tensor, "src head d_head"],
    W_O: Float[Tensor, "head d_head d_model"],
    dst: int,
) -> Float[Tensor, "head src d_model"]:
    """``pattern[h, dst, src] · v[src, h] · W_O[h]``: what each source adds to head h's output at
    ``dst``. Summed over ``src`` it is ``z[dst, h] · W_O[h]``."""
    return einsum(pattern[:, dst], v, W_O, "h s, s h e, h e d -> h s d")


def _layer_names(layer: int) -> tuple[str, str, str]:
    return (
        f"blocks.{layer}.attn.hook_pattern",
        f"blocks.{layer}.attn.hook_v",
        f"blocks.{layer}.attn.hook_z",
    )


@register(
    "token_head",
    aliases=("token_x_head", "head_map"),
    family="linking",
    summary="Each head's output at the target position split by source token, scored by the "
    "target's gradient there or by its direct effect on the logits (Elhage et al. 2021).",
    layered=True,
)
def token_head(ctx: Context, *, mode: str = "gradient") -> MethodOutput:
    if mode not in MODES:
        raise MethodError(f"Unknown mode {mode!r}; choose one of {list(MODES)}.")
    a, plan = ctx.adapter, ctx.plan
    L, H = a.n_layers, a.n_heads
    final = a.final_resid_hook
    keep: dict[str, Tensor] = {}
    names = [n for layer in range(L) for n in _layer_names(layer)]
    hooks = capture(names, keep)
    if mode == "direct" and not isinstance(plan, LogitPlan):
        raise MethodError(
            "mode='direct' scores the direct effect through the unembedding, so it needs a "
            "next-token, contrast or continuation target; for probes, SAE features or functions "
            "use mode='gradient'."
        )
    if mode == "gradient":
        taps = Taps([f"blocks.{layer}.attn.hook_z" for layer in range(L)], keep=False)
    else:
        taps = Taps([final], keep=False)
        if a.has_hook("ln_final.hook_scale"):
            hooks.append(("ln_final.hook_scale", lambda x, hook: x.detach()))
    x = ctx.input_embed()
    with torch.enable_grad():
        # Taps last: the stored z is the model's own, the tap adds zero after it.
        vals = evaluate_hooked(a, plan, ctx.tokens, x, fwd_hooks=hooks + taps.hooks())
        if taps.names[0] not in taps.delta:
            raise MethodError(
                f"mode={mode!r} needs the target to be read after {taps.names[0]!r}; this target "
                "stops earlier (a probe or SAE feature at an inner hook). Use mode='gradient'."
            )
        grads = [taps.grads(vals[0, r], retain_graph=r < plan.n_rows - 1) for r in range(plan.n_rows)]
    # A target read at an inner hook (a probe) stops the forward: later layers never ran and
    # cannot contribute, so their scores are 0.
    ran = [layer for layer in range(L) if all(n in keep for n in _layer_names(layer))]
    if mode == "gradient":
        ran = [layer for layer in ran if f"blocks.{layer}.attn.hook_z" in taps.delta]
    n_ran = len(ran)
    dst = torch.tensor(plan.positions, device=x.device)
    scores = torch.zeros(L, H, plan.n_rows, ctx.n_pos, dtype=x.dtype, device=x.device)
    err = 0.0
    if n_ran:
        pattern = torch.stack([keep[_layer_names(layer)[0]][0] for layer in ran])  # l h q k
        v = torch.stack([kv_to_q(keep[_layer_names(layer)[1]], H)[0] for layer in ran])  # l s h e
        z = torch.stack([keep[_layer_names(layer)[2]][0] for layer in ran])  # l q h e
        if mode == "gradient":
            # piece · ∂T/∂(z W_O) = pattern · (v · ∂T/∂z): W_O cancels, no d_model-sized pieces.
            gz = torch.stack(
                [torch.stack([g[f"blocks.{layer}.attn.hook_z"][0] for layer in ran]) for g in grads]
            )  # r l q h e
            gz = gz[torch.arange(len(dst)), :, dst]  # r l h e
            vg = einsum(v, gz, "l s h e, r l h e -> l h r s")
        else:
            W_O = a.model.W_O.detach()[ran]  # l h e d
            gf = torch.stack([g[final][0] for g in grads])[torch.arange(len(dst)), dst]  # r d
            vg = einsum(v, W_O, gf, "l s h e, l h e d, r d -> l h r s")
        pat = pattern[:, :, dst]  # l h r s
        scores[:n_ran] = pat * vg
        # The decomposition's own check: Σ_src pattern·v reproduces z at each target position.
        recon = einsum(pat, v, "l h r s, l s h e -> l r h e")
        err = float((recon - z[:, dst]).abs().max())
    scores = mask_fixed(ctx, scores)
    return MethodOutput(
        scores,
        dims=("layer", "head", "target", "src"),
        params={"mode": mode, "frozen_final_norm_scale": mode == "direct"},
        diagnostics={
            "decomposition_error": err,
            "layers_reached": n_ran,
            "f_input": vals[0].detach().tolist(),
        },
    )


def token_head_map(
    model: Any,
    text: Any,
    target: Any = None,
    mode: str = "gradient",
    *,
    attribute_bos: bool = True,
    **kwargs: Any,
) -> Any:
    """Token × head contributions as an :class:`~mechattr.Attribution` with dims
    ``("layer", "head", "target", "src")``; see the module docstring. The BOS column is kept by
    default (attention to BOS is a real part of a head's output, so the pieces then sum to it)."""
    from ..api import attribute

    return attribute(
        model, text, target, method="token_head", mode=mode, attribute_bos=attribute_bos, **kwargs
    )


__all__ = [
    "token_head_map", "head_pieces", "kv_to_q", "Taps", "frozen_hooks", "capture", "evaluate_hooked",
]
