"""The run options shared by :func:`mechattr.attribute`, :func:`mechattr.attribute_dataset`,
:func:`mechattr.validate`, :func:`mechattr.report` and the command line, declared once.

Each field carries its default, its check and its command-line help; the CLI builds its argparse
parent parsers from these fields (after Inseq's argument dataclasses that extend each other), and
the Python entry points take the same names as keywords.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import MethodError


def _opt(default: Any, help: str, *flags: str, type: Any = None) -> Any:
    return field(default=default, metadata={"help": help, "flags": flags, "type": type})


@dataclass(frozen=True)
class TargetOptions:
    """What is explained, besides the target itself."""

    contrast: Any = _opt(None, "a foil token: explain target vs foil (logit difference by default)", "--contrast", "-c")
    kind: str | None = _opt(None, "log_prob (default), prob, logit; for contrasts logit_diff, log_prob_diff, prob_diff", "--kind")
    position: int | None = _opt(None, "prompt position whose prediction is explained (default: last)", "--position", type=int)
    prepend_bos: bool | None = _opt(None, "override the model's BOS policy")


@dataclass(frozen=True)
class RunOptions(TargetOptions):
    """How a method runs: the BOS column, memory, batching and the seed."""

    attribute_bos: bool = _opt(False, "also attribute the BOS token (by default held fixed, score 0)")
    memory_mb: float = _opt(2048.0, "activation memory cap per batch in MiB (default 2048)", "--memory-mb", type=float)
    batch_size: int | None = _opt(None, "sequences per forward pass (overrides --memory-mb)", "--batch-size", type=int)
    seed: int = _opt(0, "seed for stochastic methods and every random choice (default 0)", "--seed", type=int)

    def check(self) -> "RunOptions":
        m, b = self.memory_mb, self.batch_size
        if not (isinstance(m, (int, float)) and m > 0):
            raise MethodError(f"memory_mb must be a positive number, got {m!r}.")
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise MethodError(f"batch_size must be a positive integer or None, got {b!r}.")
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def target_kwargs(self) -> dict[str, Any]:
        """``contrast``, ``kind``, ``position``, ``prepend_bos``: the keywords of :func:`mechattr.resolve`."""
        return {f.name: getattr(self, f.name) for f in fields(TargetOptions)}


TARGET_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(TargetOptions))
RUN_OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(RunOptions))


def defaults(names: tuple[str, ...] = RUN_OPTIONS) -> dict[str, Any]:
    """``{name: default}`` of the named run options."""
    return {f.name: f.default for f in fields(RunOptions) if f.name in names}


def cli_parent(*names: str) -> argparse.ArgumentParser:
    """An argparse parent parser with the flags of the named options (in the order given)."""
    p = argparse.ArgumentParser(add_help=False)
    by_name = {f.name: f for f in fields(RunOptions)}
    for n in names:
        f = by_name[n]
        kw: dict[str, Any] = {"default": f.default, "help": f.metadata["help"], "dest": n}
        if f.metadata["type"] is not None:
            kw["type"] = f.metadata["type"]
        p.add_argument(*f.metadata["flags"], **kw)
    return p


def from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The run options present on a parsed command line, as keywords for the Python API."""
    return {n: getattr(args, n) for n in RUN_OPTIONS if hasattr(args, n)}


__all__ = ["TargetOptions", "RunOptions", "TARGET_OPTIONS", "RUN_OPTIONS", "defaults", "cli_parent", "from_args"]
