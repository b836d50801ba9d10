"""Token × head contribution maps as an :class:`~mechattr.Attribution`.

The method itself is :func:`mechattr.methods.token_head.token_head` (registered as
``"token_head"``, with the other methods); the hook helpers it uses live in
:mod:`mechattr.tl.hooks`. Names are re-exported here for code written against the older layout.
"""

from __future__ import annotations

from typing import Any

from ..methods.token_head import head_pieces, kv_to_q
from ..targets import evaluate_hooked
from ..tl.hooks import Taps, freeze_names, frozen_hooks


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
    ``("layer", "head", "target", "src")``; see :mod:`mechattr.methods.token_head`. The BOS column
    is kept by default (attention to BOS is a real part of a head's output, so the pieces then sum
    to it)."""
    from ..api import attribute

    return attribute(
        model, text, target, method="token_head", mode=mode, attribute_bos=attribute_bos, **kwargs
    )


__all__ = [
    "token_head_map", "head_pieces", "kv_to_q", "Taps", "frozen_hooks", "freeze_names", "evaluate_hooked",
]
