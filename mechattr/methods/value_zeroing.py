"""Value zeroing (Mohebbi et al. 2023, "Quantifying Context Mixing in Transformers").

For layer l and source token j, the value vector of j is zeroed in every head of layer l only
(``blocks.{l}.attn.hook_v``), so no head of that layer can move j's content to other tokens,
while j still takes part in the attention softmax (its key is untouched). The score of target
position i is how much i's representation at the output of the same layer
(``blocks.{l}.hook_resid_post``) changes:

    VZ[l, i, j] = 1 - cos(x_i^l, x_i^{l, v_j = 0})            (measure="cosine", the paper's)

With ``normalize=True`` each (layer, target) row is divided by its sum over sources, as the
paper does before comparing with attention maps. ``measure="target"`` reports instead how much
the attributed target value drops when v_j is zeroed in layer l: f(x) - f(x | v_j^l = 0).

Grouped-query attention: ``hook_v`` carries the key/value heads ([batch, pos, n_kv_heads,
d_head]); zeroing a position there zeroes it for every query head that shares the kv head,
which is all of them. One sequence per zeroed source runs in a batch; a layer's pass stops
after that layer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Bool, Float
from torch import Tensor

from ..errors import MethodError
from ..contract import Context, MethodOutput, register
from ..tl.hooks import Recorder
from ._common import mask_fixed

MEASURES = ("cosine", "target")


def zero_values_hook(keep: Bool[Tensor, "batch pos"]) -> Callable[[Tensor, Any], Tensor]:
    """A hook that zeroes the value vectors where ``keep`` is False (pos is axis 1 of hook_v)."""

    def hook(v: Tensor, hook: Any) -> Tensor:
        if v.shape[:2] != keep.shape:
            raise MethodError(
                f"Expected hook_v with [batch, pos, ...] = {tuple(keep.shape)}, got {tuple(v.shape)}; "
                "value zeroing does not support this model's attention layout."
            )
        mask = keep.to(v.dtype).reshape(*keep.shape, *([1] * (v.dim() - 2)))
        return v * mask

    return hook


def _original_resid(ctx: Context) -> Float[Tensor, "layer pos d_model"]:
    a = ctx.adapter
    rec = Recorder(detach=True, clone=True)
    hooks = [rec.hook(a.resid_post(l), key=l) for l in range(a.n_layers)]
    with torch.no_grad():
        a.run_until(ctx.tokens, a.final_resid_hook, fwd_hooks=hooks)
    return torch.stack([rec[l][0] for l in range(a.n_layers)])


@register(
    "value_zeroing",
    aliases=("vz",),
    family="context_mixing",
    summary="Change of each layer's output at the target when one token's values are zeroed there (Mohebbi et al. 2023).",
    layered=True,
)
def value_zeroing(ctx: Context, *, measure: str = "cosine", normalize: bool = False) -> MethodOutput:
    if measure not in MEASURES:
        raise MethodError(f"Unknown measure {measure!r}; choose one of {list(MEASURES)}.")
    if not isinstance(normalize, bool):
        raise MethodError(f"normalize must be True or False, got {normalize!r}.")
    if normalize and measure != "cosine":
        raise MethodError("normalize=True applies to measure='cosine' (a distance); drop it for 'target'.")
    a = ctx.adapter
    n_pos, rows = ctx.n_pos, ctx.plan.n_rows
    L = a.n_layers
    src = ctx.free.nonzero(as_tuple=True)[0]  # sources to zero; fixed ones keep score 0
    target_pos = torch.tensor(ctx.plan.positions, device=ctx.tokens.device)
    scores = torch.zeros(L, rows, n_pos, dtype=torch.float64)
    orig = _original_resid(ctx)[:, target_pos] if measure == "cosine" else None  # [L, rows, d]
    f_x = ctx.values()[0] if measure == "target" else None
    eye = torch.eye(n_pos, dtype=torch.bool, device=ctx.tokens.device)
    with torch.no_grad():
        for layer in range(L):
            v_hook = a.attn_v(layer)
            for sl in ctx.batches(int(src.numel()), with_grad=False):
                js = src[sl]
                keep = ~eye[js]  # sequence i zeroes source js[i]
                toks = ctx.tokens.expand(js.numel(), -1)
                hooks = [(v_hook, zero_values_hook(keep))]
                if measure == "cosine":
                    resid = a.run_until(toks, a.resid_post(layer), fwd_hooks=hooks)
                    new = resid[:, target_pos]  # [n, rows, d]
                    cos = F.cosine_similarity(new.double(), orig[layer][None].double(), dim=-1)
                    val = 1.0 - cos
                else:
                    val = f_x[None].double() - ctx.plan.evaluate(a, toks, fwd_hooks=hooks).double()
                scores[layer, :, js.cpu()] = rearrange(val, "n rows -> rows n").cpu()
    scores = mask_fixed(ctx, scores)
    if normalize:
        scores = scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
    return MethodOutput(
        scores.float(),
        dims=("layer", "target", "src"),
        params={"measure": measure, "normalize": normalize},
        diagnostics={"n_forward_sequences": int(src.numel()) * L, "batch_size": ctx.max_batch(with_grad=False)},
    )
