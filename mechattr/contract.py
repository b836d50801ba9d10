"""The contract a method author implements, in one public module.

A method is a plain function ``fn(ctx: Context, *, param=default, ...) -> MethodOutput``
registered by name with :func:`register`:

* :class:`Context` is everything the method gets about one prompt and one target: the model
  adapter, the target plan (tokens, positions, rows), the memory cap and batch size, the seed and
  the positions held fixed (BOS). Its helpers batch target values under the memory cap.
* :class:`MethodOutput` is what it returns: ``scores`` with named axes ``dims`` (``("target",
  "src")`` for token scores; layered methods add ``"layer"``/``"head"`` in front), the parameters
  actually used and diagnostics (``f_input``, ``completeness_error`` ...).
* :func:`register` records it under a name, aliases, a family and the promises the validation
  checks hold it to (``"completeness"``).

Finding a method by name (:func:`mechattr.get_method`) lives in :mod:`mechattr.registry`, which
imports the built-in methods; this module imports none of them, so a method module can import it
without an import cycle.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .targets import Plan
from .tl import fastpath, prefix
from .tl.adapter import ModelAdapter


@dataclass
class Context:
    """Everything a method needs about one prompt and one target.

    ``adapter`` runs the model (:class:`~mechattr.ModelAdapter`); ``plan`` is the resolved target
    (``plan.tokens``, ``plan.n_rows``, ``plan.evaluate(adapter, tokens, embed)`` -> ``[batch,
    rows]``); ``memory_mb``/``batch_size`` bound a batch (use :meth:`batches`); ``seed`` seeds
    :meth:`generator`; ``fixed`` marks positions that are never perturbed and score 0 (the BOS
    token unless ``attribute_bos``); ``quiet`` silences progress bars."""

    adapter: ModelAdapter
    plan: Plan
    memory_mb: float = 2048.0
    batch_size: int | None = None
    seed: int = 0
    quiet: bool = True
    # Positions whose embedding is never perturbed and whose score is 0 (the BOS token).
    fixed: Bool[Tensor, " pos"] | None = None
    _input_embed: Tensor | None = field(default=None, repr=False)

    @property
    def tokens(self) -> Int[Tensor, "1 pos"]:
        return self.plan.tokens

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[-1])

    @property
    def free(self) -> Bool[Tensor, " pos"]:
        """Positions that are attributed."""
        if self.fixed is None:
            return torch.ones(self.n_pos, dtype=torch.bool, device=self.tokens.device)
        return ~self.fixed

    def input_embed(self) -> Float[Tensor, "1 pos d_model"]:
        if self._input_embed is None:
            self._input_embed = self.adapter.embed(self.tokens)
        return self._input_embed

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.seed) + offset)
        return g

    def max_batch(self, with_grad: bool = True, hook_free: bool = True) -> int:
        """How many sequences fit in one forward(+backward) under ``memory_mb``.

        ``hook_free``: the passes carry no mechattr hook (gradient and perturbation passes); on
        the SDPA fast path their attention costs no ``n x n`` term, so the estimate is linear in
        the input length per sequence. Passes with hooks say ``hook_free=False``."""
        if self.batch_size is not None:
            return max(1, int(self.batch_size))
        a = self.adapter
        per_token = a.activation_bytes_per_token() + a.attention_bytes_per_token(self.n_pos, hook_free=hook_free)
        if not with_grad:
            per_token = per_token // 4
        per_seq = max(1, per_token * self.n_pos)
        return max(1, int(self.memory_mb * 2**20 // per_seq))

    def batches(self, n: int, with_grad: bool = True, hook_free: bool = True) -> Iterator[slice]:
        step = self.max_batch(with_grad, hook_free=hook_free)
        for i in range(0, n, step):
            yield slice(i, min(n, i + step))

    def values(
        self,
        embeds: Float[Tensor, "n pos d_model"] | None = None,
        tokens: Int[Tensor, "n pos"] | None = None,
    ) -> Float[Tensor, "n rows"]:
        """Target values without gradients, batched."""
        if embeds is None and tokens is None:
            embeds = self.input_embed()
        n = embeds.shape[0] if embeds is not None else tokens.shape[0]
        out = []
        # Token-replacement probes (ReAGent) share the unperturbed prefix: reuse it.
        reuse = prefix.reuse(self) if tokens is not None and tokens.shape[-1] == self.n_pos else contextlib.nullcontext()
        # Embedding evaluations are the f(x), f(baseline) of completeness checks: never autocast.
        exact = fastpath.full_precision() if tokens is None else contextlib.nullcontext()
        with torch.no_grad(), reuse, exact:
            for sl in self.batches(n, with_grad=False):
                toks = tokens[sl] if tokens is not None else self.tokens.expand(sl.stop - sl.start, -1)
                emb = embeds[sl] if embeds is not None else None
                out.append(self.plan.evaluate(self.adapter, toks, emb))
        return torch.cat(out, dim=0)


#: A method: ``fn(ctx, **params) -> MethodOutput``.
MethodFn = Callable[..., "MethodOutput"]


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its function, family, one-line summary, aliases and promises
    (``"completeness"``: the token scores sum to f(x) - f(baseline)); ``layered`` methods return
    scores with a ``layer`` (and maybe ``head``) axis."""

    name: str
    fn: MethodFn
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
) -> Callable[[MethodFn], MethodFn]:
    """Decorator: ``fn(ctx, *, param=default, ...) -> MethodOutput`` becomes method ``name``."""

    def deco(fn: MethodFn) -> MethodFn:
        if name in _METHODS or name in _ALIASES:
            raise RuntimeError(f"method {name!r} registered twice")
        _METHODS[name] = MethodInfo(name, fn, family, summary, tuple(aliases), tuple(promises), layered)
        for a in aliases:
            _ALIASES[a] = name
        return fn

    return deco


@dataclass
class MethodOutput:
    """What a method returns; :func:`mechattr.api.to_attribution` wraps it into an Attribution."""

    scores: Tensor  # axes ``dims``
    dims: tuple[str, ...] = ("target", "src")
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)


def registered() -> dict[str, MethodInfo]:
    """Methods registered so far (name -> info), without importing the built-in ones."""
    return dict(_METHODS)


def resolve_alias(key: str) -> str:
    return _ALIASES.get(key, key)


def known_names() -> list[str]:
    return list(_METHODS) + list(_ALIASES)


__all__ = ["Context", "MethodOutput", "MethodInfo", "MethodFn", "register", "registered"]
