"""Methods are plain functions registered by name; this module finds them and checks their params."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MethodError, suggest


@dataclass(frozen=True)
class MethodInfo:
    name: str
    fn: Callable[..., Any]
    family: str
    summary: str
    aliases: tuple[str, ...] = ()
    # "completeness": sum of token scores equals f(x) - f(baseline) (up to numerical error)
    promises: tuple[str, ...] = ()
    layered: bool = False

    def parameters(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if p.kind == p.KEYWORD_ONLY
        }


_METHODS: dict[str, MethodInfo] = {}
_ALIASES: dict[str, str] = {}


def register(
    name: str,
    *,
    family: str,
    summary: str,
    aliases: tuple[str, ...] = (),
    promises: tuple[str, ...] = (),
    layered: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``fn(ctx, *, param=default, ...) -> MethodOutput`` becomes method ``name``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _METHODS or name in _ALIASES:
            raise RuntimeError(f"method {name!r} registered twice")
        _METHODS[name] = MethodInfo(name, fn, family, summary, tuple(aliases), tuple(promises), layered)
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return deco


def _load_builtin() -> None:
    from . import methods  # noqa: F401  (registers the built-in methods on import)


def get_method(name: str) -> MethodInfo:
    _load_builtin()
    if not isinstance(name, str):
        raise MethodError(f"A method is named by a string, got {type(name).__name__}.")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise MethodError(
            f"Unknown attribution method {name!r}.{suggest(key, list(_METHODS) + list(_ALIASES))} "
            "Run `mechattr methods` (or mechattr.list_methods()) to see them all."
        )
    return _METHODS[key]


def list_methods() -> list[MethodInfo]:
    _load_builtin()
    return sorted(_METHODS.values(), key=lambda m: (m.family, m.name))


def check_params(info: MethodInfo, params: dict[str, Any]) -> None:
    valid = info.parameters()
    for k in params:
        if k not in valid:
            raise MethodError(
                f"Method {info.name!r} has no parameter {k!r}.{suggest(k, valid)} "
                f"Its parameters: {sorted(valid) or 'none'}."
            )


@dataclass
class MethodOutput:
    """What a method returns; :func:`mechattr.attribute` wraps it into an Attribution."""

    scores: Any  # Tensor with axes ``dims``
    dims: tuple[str, ...] = ("target", "src")
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
