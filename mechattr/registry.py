"""Finding registered methods by name (the built-in ones are imported on first lookup).

The contract itself (:class:`~mechattr.contract.Context`, :class:`~mechattr.contract.MethodOutput`,
:func:`~mechattr.contract.register`) lives in :mod:`mechattr.contract`; its names are re-exported
here for code written against the older layout.
"""

from __future__ import annotations

from typing import Any

from . import contract
from .contract import MethodInfo, MethodOutput, register
from .errors import MethodError, suggest


def _load_builtin() -> None:
    from . import methods  # noqa: F401  (registers the built-in methods on import)


def get_method(name: str) -> MethodInfo:
    """The registered method called ``name`` (or one of its aliases)."""
    _load_builtin()
    if not isinstance(name, str):
        raise MethodError(f"A method is named by a string, got {type(name).__name__}.")
    key = contract.resolve_alias(name.strip().lower().replace("-", "_"))
    methods = contract.registered()
    if key not in methods:
        raise MethodError(
            f"Unknown attribution method {name!r}.{suggest(key, contract.known_names())} "
            "Run `mechattr methods` (or mechattr.list_methods()) to see them all."
        )
    return methods[key]


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return sorted(contract.registered().values(), key=lambda m: (m.family, m.name))


def check_params(info: MethodInfo, params: dict[str, Any]) -> None:
    valid = info.parameters()
    for k in params:
        if k not in valid:
            raise MethodError(
                f"Method {info.name!r} has no parameter {k!r}.{suggest(k, valid)} "
                f"Its parameters: {sorted(valid) or 'none'}."
            )


__all__ = ["get_method", "list_methods", "check_params", "MethodInfo", "MethodOutput", "register"]
