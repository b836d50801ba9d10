"""Progress bars for long runs (IG over long inputs, SHAP, validation, dataset runs).

A thin wrapper over tqdm that is silent when ``quiet=True``, under pytest, when the environment sets
``MECHATTR_QUIET=1``, or when tqdm is not installed — so library code can always wrap its loops.

>>> for batch in progress(batches, desc="integrated gradients", quiet=quiet): ...
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, Iterator, TypeVar

T = TypeVar("T")


def silenced(quiet: bool = False) -> bool:
    """Whether progress output is off: asked for, or running inside tests."""
    return (
        bool(quiet)
        or os.environ.get("MECHATTR_QUIET", "") not in ("", "0")
        or "PYTEST_CURRENT_TEST" in os.environ
    )


def progress(
    iterable: Iterable[T],
    desc: str | None = None,
    total: int | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> Iterator[T]:
    """``iterable`` wrapped in a tqdm bar (on stderr), or unchanged when silenced."""
    if silenced(quiet):
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar, same iteration
        return iter(iterable)
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return iter(tqdm(iterable, desc=desc, total=total, **kwargs))


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def bar(total: int | None = None, desc: str | None = None, quiet: bool = False, **kwargs: Any) -> Any:
    """A manual bar (``with bar(total=n) as b: b.update(k)``); a no-op object when silenced."""
    if silenced(quiet):
        return _NullBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NullBar()
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    return tqdm(total=total, desc=desc, **kwargs)
