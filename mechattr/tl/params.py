"""Parameter groups and safe copies of a TransformerLens model (its module layout is TL's
knowledge): used by the parameter-randomization check, which works on a copy."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from ..errors import ModelError


def param_groups(model: Any) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """Parameter groups from the top of the model down: output, blocks L-1 .. 0, embeddings."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ModelError("Parameter randomization needs a TransformerLens model with .blocks.")

    def params(*mods: Any) -> list[torch.nn.Parameter]:
        out = []
        for m in mods:
            if m is not None:
                out.extend(m.parameters())
        return out

    groups = [("output", params(getattr(model, "ln_final", None), getattr(model, "unembed", None)))]
    for layer in reversed(range(len(blocks))):
        groups.append((f"block {layer}", params(blocks[layer])))
    groups.append(("embeddings", params(getattr(model, "embed", None), getattr(model, "pos_embed", None))))
    # A parameter shared by two groups (tied embeddings) belongs to the first, top-down.
    seen: set[int] = set()
    result = []
    for name, ps in groups:
        uniq = []
        for p in ps:
            if id(p) not in seen:
                seen.add(id(p))
                uniq.append(p)
        result.append((name, uniq))
    return result


def tied_note(model: Any) -> str | None:
    emb = {id(p) for m in (getattr(model, "embed", None),) if m is not None for p in m.parameters()}
    out = {id(p) for m in (getattr(model, "unembed", None),) if m is not None for p in m.parameters()}
    if emb & out:
        return "The model ties its embedding and unembedding: they are randomized together with 'output'."
    return None


def _non_leaf_tensors(obj: Any, found: dict[int, Tensor], depth: int = 0) -> None:
    if isinstance(obj, Tensor):
        if obj.grad_fn is not None:
            found[id(obj)] = obj
        return
    if depth > 3:
        return
    if isinstance(obj, dict):
        for v in obj.values():
            _non_leaf_tensors(v, found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _non_leaf_tensors(v, found, depth + 1)


def copy_model(model: Any) -> Any:
    """A deep copy. TransformerBridge components keep tensors derived from their weights (with
    autograd history) after a gradient pass, which deepcopy refuses; they are copied detached."""
    memo: dict[int, Any] = {}
    found: dict[int, Tensor] = {}
    for m in model.modules():
        for v in vars(m).values():
            _non_leaf_tensors(v, found)
    for k, t in found.items():
        memo[k] = t.detach().clone()
    try:
        return copy.deepcopy(model, memo)
    except Exception as e:  # pragma: no cover - depends on exotic model classes
        raise ModelError(
            f"Could not copy the model for the randomization check ({e}); mechattr never randomizes "
            "the user's model in place. Pass checks without 'randomization' for this model."
        ) from e


__all__ = ["param_groups", "tied_note", "copy_model"]
