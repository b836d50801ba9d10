"""The ``token_head`` method: token × head contribution maps.

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

from typing import Any

import torch
from einops import einsum, repeat
from jaxtyping import Float
from torch import Tensor

from ..contract import Context, MethodOutput, register
from ..errors import MethodError
from ..targets import LogitPlan, evaluate_hooked
from ..tl.hooks import Recorder, Taps
from ._common import mask_fixed

MODES = ("gradient", "direct")


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


def _layer_names(a: Any, layer: int) -> tuple[str, str, str]:
    return a.attn_pattern(layer), a.attn_v(layer), a.attn_z(layer)


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
    rec = Recorder(detach=True)
    hooks = rec.hooks([n for layer in range(L) for n in _layer_names(a, layer)])
    keep = rec.acts
    if mode == "direct" and not isinstance(plan, LogitPlan):
        raise MethodError(
            "mode='direct' scores the direct effect through the unembedding, so it needs a "
            "next-token, contrast or continuation target; for probes, SAE features or functions "
            "use mode='gradient'."
        )
    if mode == "gradient":
        taps = Taps([a.attn_z(layer) for layer in range(L)], keep=False)
    else:
        taps = Taps([final], keep=False)
        if a.has_hook(a.hook_ln_final_scale):
            hooks.append((a.hook_ln_final_scale, lambda x, hook: x.detach()))
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
    ran = [layer for layer in range(L) if all(n in keep for n in _layer_names(a, layer))]
    if mode == "gradient":
        ran = [layer for layer in ran if a.attn_z(layer) in taps.delta]
    n_ran = len(ran)
    dst = torch.tensor(plan.positions, device=x.device)
    scores = torch.zeros(L, H, plan.n_rows, ctx.n_pos, dtype=x.dtype, device=x.device)
    err = 0.0
    if n_ran:
        pattern = torch.stack([keep[_layer_names(a, layer)[0]][0] for layer in ran])  # l h q k
        v = torch.stack([kv_to_q(keep[_layer_names(a, layer)[1]], H)[0] for layer in ran])  # l s h e
        z = torch.stack([keep[_layer_names(a, layer)[2]][0] for layer in ran])  # l q h e
        if mode == "gradient":
            # piece · ∂T/∂(z W_O) = pattern · (v · ∂T/∂z): W_O cancels, no d_model-sized pieces.
            gz = torch.stack(
                [torch.stack([g[a.attn_z(layer)][0] for layer in ran]) for g in grads]
            )  # r l q h e
            gz = gz[torch.arange(len(dst)), :, dst]  # r l h e
            vg = einsum(v, gz, "l s h e, r l h e -> l h r s")
        else:
            W_O = a.W_O_stack(ran).detach()  # l h e d
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


__all__ = ["token_head", "head_pieces", "kv_to_q", "MODES"]
