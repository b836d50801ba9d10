"""Offline prompt-pair generators for circuit discovery.

Each generator returns a list of :class:`Pair` (clean prompt, corrupted prompt of the same token
length, target token and contrast token), ready for :func:`mechattr.circuits.edge_attribution`
(pass the list as ``clean`` with ``corrupt=None``). :func:`load_pairs` reads user pairs from JSONL.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Pair:
    clean: str
    corrupt: str
    target: str | None = None
    contrast: str | None = None
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
