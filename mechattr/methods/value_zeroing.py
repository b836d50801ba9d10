"""Value zeroing (Mohebbi et al. 2023, "Quantifying Context Mixing in Transformers").

For layer l and source token j, the value vector of j is zeroed in every head of layer l only
(``blocks.{l}.attn.hook_v``), so no head of that layer can move j's content to other tokens,
while j still takes part in the attention softmax (its key is untouched). The mixing score of
position i is how much i's representation at the output of the same layer
(``blocks.{l}.hook_resid_post``) changes:

    VZ[l, i, j] = 1 - cos(x_i^l, x_i^{l, v_j = 0})            (measure="cosine", the paper's)

Defaults follow the paper's reference code: every token is zeroed, BOS included
(``sources="all"``); each row ``VZ[l, i, :]`` is divided by its sum over sources
(``normalize=True``); and the token scores describe the *input*: ``aggregate="rollout"``
multiplies the row-normalised layer matrices as attention rollout does, without adding the
identity (value zeroing already measures the output of the residual block):
``R_0 = VZ_0``, ``R_l = VZ_l R_{l-1}``, so ``R_l[t, j]`` is the share of input token j in
position t after layer l. ``aggregate="layer"`` returns the per-layer matrices instead
(mechattr's earlier output, whose token scores describe the last layer only).

``sources="attributed"`` zeroes only the attributed positions (BOS fixed, score 0, unless
``attribute_bos=True``), as mechattr did before. ``measure="target"`` reports instead how much
the attributed target value drops when v_j is zeroed in layer l: f(x) - f(x | v_j^l = 0)
(signed, per layer, no normalisation or rollout).

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
AGGREGATES = ("rollout", "layer")
SOURCES = ("all", "attributed")


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


def row_normalize(m: Float[Tensor, "... dst src"]) -> Float[Tensor, "... dst src"]:
    return m / m.sum(-1, keepdim=True).clamp_min(1e-12)


def value_zeroing_rollout(vz: Float[Tensor, "layer dst src"]) -> Float[Tensor, "layer dst src"]:
    """``R_0 = VZ_0``, ``R_l = VZ_l R_{l-1}`` (no identity added: the reference's rollout of
    value-zeroing matrices); ``R_l[i, j]``: share of input token j in position i after layer l."""
    out = []
    r = None
    for m in vz:  # a product along depth: the only loop, over layers
        r = m if r is None else m @ r
        out.append(r)
    return torch.stack(out)


@register(
    "value_zeroing",
    aliases=("vz",),
    family="context_mixing",
    summary="Value zeroing (Mohebbi et al. 2023): context mixing per layer, rolled out to the input.",
    layered=True,
)
def value_zeroing(
    ctx: Context,
    *,
    measure: str = "cosine",
    normalize: bool | None = None,
    aggregate: str | None = None,
    sources: str = "all",
) -> MethodOutput:
    if measure not in MEASURES:
        raise MethodError(f"Unknown measure {measure!r}; choose one of {list(MEASURES)}.")
    if sources not in SOURCES:
        raise MethodError(f"sources must be one of {list(SOURCES)}, got {sources!r}.")
    if normalize is not None and not isinstance(normalize, bool):
        raise MethodError(f"normalize must be True or False, got {normalize!r}.")
    if aggregate is not None and aggregate not in AGGREGATES:
        raise MethodError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}.")
    if measure == "target":
        if normalize:
            raise MethodError("normalize=True applies to measure='cosine' (a distance); drop it for 'target'.")
        if aggregate == "rollout":
            raise MethodError("aggregate='rollout' multiplies cosine mixing matrices; use measure='cosine' or aggregate='layer'.")
        normalize, aggregate = False, "layer"
    normalize = True if normalize is None else normalize
    aggregate = "rollout" if aggregate is None else aggregate
    if aggregate == "rollout" and not normalize:
        raise MethodError("aggregate='rollout' multiplies row-normalised matrices; pass normalize=True or aggregate='layer'.")
    a = ctx.adapter
    n_pos, rows = ctx.n_pos, ctx.plan.n_rows
    L = a.n_layers
    dev = ctx.tokens.device
    zero = torch.ones(n_pos, dtype=torch.bool, device=dev) if sources == "all" else ctx.free
    src = zero.nonzero(as_tuple=True)[0]  # sources to zero; the others keep score 0
    target_pos = torch.tensor(ctx.plan.positions, device=dev)
    eye = torch.eye(n_pos, dtype=torch.bool, device=dev)
    if measure == "cosine":
        # every destination position (the rollout needs whole matrices); rows read at the end
        full = torch.zeros(L, n_pos, n_pos, dtype=torch.float64)
        orig = _original_resid(ctx)  # [L, pos, d]
    else:
        scores = torch.zeros(L, rows, n_pos, dtype=torch.float64)
        f_x = ctx.values()[0]
    with torch.no_grad():
        for layer in range(L):
            v_hook = a.attn_v(layer)
            for sl in ctx.batches(int(src.numel()), with_grad=False, hook_free=False):
                js = src[sl]
                keep = ~eye[js]  # sequence i zeroes source js[i]
                toks = ctx.tokens.expand(js.numel(), -1)
                hooks = [(v_hook, zero_values_hook(keep))]
                if measure == "cosine":
                    resid = a.run_until(toks, a.resid_post(layer), fwd_hooks=hooks)
                    cos = F.cosine_similarity(resid.double(), orig[layer][None].double(), dim=-1)  # [n, pos]
                    full[layer, :, js.cpu()] = rearrange(1.0 - cos, "n dst -> dst n").cpu()
                else:
                    val = f_x[None].double() - ctx.plan.evaluate(a, toks, fwd_hooks=hooks).double()
                    scores[layer, :, js.cpu()] = rearrange(val, "n rows -> rows n").cpu()
    if measure == "cosine":
        if normalize:
            full = row_normalize(full)
        if aggregate == "rollout":
            full = value_zeroing_rollout(full)
        scores = full[:, target_pos.cpu()]
    if sources == "attributed":
        scores = mask_fixed(ctx, scores)
    return MethodOutput(
        scores.float(),
        dims=("layer", "target", "src"),
        params={"measure": measure, "normalize": normalize, "aggregate": aggregate, "sources": sources},
        diagnostics={"n_forward_sequences": int(src.numel()) * L, "batch_size": ctx.max_batch(with_grad=False, hook_free=False)},
    )
