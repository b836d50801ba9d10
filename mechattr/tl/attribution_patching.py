"""TransformerLens 4's own attribution patching (``tools.analysis.attribution_patching``), behind
the adapter: the optional ``backend="transformer_lens"`` of
:func:`mechattr.linking.head_attribution`, and an oracle for its tests."""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import MethodError
from .adapter import ModelAdapter, tl_major


def tl_attribution_patching_available() -> bool:
    if tl_major() < 4:
        return False
    try:
        from transformer_lens.tools.analysis.attribution_patching import attribution_patch  # noqa: F401
    except ImportError:
        return False
    return True


def tl_node_scores(
    adapter: ModelAdapter,
    clean: Int[Tensor, "1 pos"],
    corrupt: Int[Tensor, "1 pos"],
    metric: Callable[[Float[Tensor, "batch pos vocab"]], Tensor],
) -> tuple[Float[Tensor, "layer pos head"], Float[Tensor, "layer pos"]]:
    """Head-output and MLP-output node scores by TL's ``attribution_patch`` (gradient at the
    corrupt run, one point): ``(heads [layer, pos, head], mlp [layer, pos])`` in float64."""
    if not tl_attribution_patching_available() or adapter.kind != "bridge":
        raise MethodError(
            "backend='transformer_lens' needs TransformerLens 4 (tools.analysis.attribution_patching) "
            "and a TransformerBridge; use backend='mechattr' (same scores, our own hooks)."
        )
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    res = attribution_patch(adapter.model, clean, corrupt, metric)
    L, H, P = adapter.n_layers, adapter.n_heads, clean.shape[-1]
    heads = torch.zeros(L, P, H, dtype=torch.float64)
    mlp = torch.zeros(L, P, dtype=torch.float64)
    for node, s in res.node_scores.items():
        if node.kind == "attn_head_out":
            heads[node.layer, node.position, node.head] = s
        elif node.kind == "mlp_out":
            mlp[node.layer, node.position] = s
    return heads, mlp


__all__ = ["tl_attribution_patching_available", "tl_node_scores"]
