"""One exception hierarchy. Every message says what was wrong and what to do about it."""

from __future__ import annotations

import difflib
from typing import Iterable


class MechattrError(Exception):
    """Base class of every error mechattr raises on purpose."""


class InputError(MechattrError, ValueError):
    """The text, tokens or positions given to a call cannot be used."""


class TargetError(MechattrError, ValueError):
    """The attribution target cannot be built (multi-token target, foil equal to target, ...)."""


class MethodError(MechattrError, ValueError):
    """Unknown method or invalid method parameters."""


class ModelError(MechattrError):
    """The model cannot be loaded or lacks something a method needs (a hook, a tokenizer)."""


class HookError(ModelError, KeyError):
    """A hook name the model does not have."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class ResultFileError(MechattrError, OSError):
    """A result file that is truncated, from an incompatible version, or not written by mechattr."""


class MechattrWarning(UserWarning):
    """Base class of the warnings mechattr gives when it has to fall back from what was asked."""


class FastPathWarning(MechattrWarning):
    """The hook-free bridge forward failed its self-check; the (slower) bridge forward is used."""


class ConfigWarning(MechattrWarning):
    """A model config field mechattr sets for its own bookkeeping could not be set."""


class UnknownTokenWarning(MechattrWarning):
    """Words of a prompt that the model's tokenizer maps to its unknown token (``<unk>``): the model
    reads them all as the same token, so an attribution to them is an attribution to ``<unk>``."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean ...?' suffix for an unknown name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
