"""What is being explained: one scalar per example and target row, computed from a forward run.

A :class:`Target` is a user-facing description ("log-prob of ' Paris'", "logit of ' is' minus
' are'", "every token of this continuation", "my function of the logits"). ``target.plan(adapter,
prompt_tokens)`` resolves it against a prompt into a :class:`Plan`: the full input tokens (prompt
plus any forced continuation), one label and read position per row, and ``evaluate`` which runs a
forward pass and returns ``[batch, rows]`` values. Methods and validation call only ``evaluate``,
so a deletion curve re-evaluates exactly what was attributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from .tl.adapter import ModelAdapter
from .tl.hooks import replace_embed
from .errors import InputError, TargetError

LOGIT_KINDS = ("log_prob", "prob", "logit")
CONTRAST_KINDS = ("logit_diff", "log_prob_diff", "prob_diff")


def resolve_position(position: int | None, n_tokens: int) -> int:
    """A prompt position (negative counts from the end) checked against the prompt length."""
    if position is None:
        return n_tokens - 1
    if isinstance(position, bool) or not isinstance(position, int):
        raise InputError(f"A position must be an int, got {type(position).__name__}.")
    p = position + n_tokens if position < 0 else position
    if not 0 <= p < n_tokens:
        raise InputError(
            f"Position {position} is out of range for a prompt of {n_tokens} tokens "
            f"(valid: {-n_tokens} .. {n_tokens - 1})."
        )
    return p


class Plan:
    """A target resolved against one prompt. Subclasses implement :meth:`evaluate`."""

    tokens: Int[Tensor, "1 pos"]
    labels: list[str]
    positions: list[int]
    token_ids: list[int | None]
    description: str

    @property
    def n_rows(self) -> int:
        return len(self.labels)

    def evaluate(
        self,
        adapter: ModelAdapter,
        tokens: Int[Tensor, "batch pos"],
        embed: Float[Tensor, "batch pos d_model"] | None = None,
        fwd_hooks: Sequence[tuple[str, Callable]] = (),
    ) -> Float[Tensor, "batch rows"]:
        raise NotImplementedError


def _score_logits(
    logits: Float[Tensor, "batch vocab"], kind: str, token: int, foil: int | None
) -> Float[Tensor, " batch"]:
    if kind == "logit":
        return logits[:, token]
    if kind == "log_prob":
        return torch.log_softmax(logits, dim=-1)[:, token]
    if kind == "prob":
        return torch.softmax(logits, dim=-1)[:, token]
    assert foil is not None
    if kind == "logit_diff":
        return logits[:, token] - logits[:, foil]
    if kind == "log_prob_diff":
        lp = torch.log_softmax(logits, dim=-1)
        return lp[:, token] - lp[:, foil]
    if kind == "prob_diff":
        p = torch.softmax(logits, dim=-1)
        return p[:, token] - p[:, foil]
    raise TargetError(f"Unknown target kind {kind!r}.")  # pragma: no cover


@dataclass
class LogitPlan(Plan):
    """Rows read the logits at given positions (the common case)."""

    tokens: Tensor
    labels: list[str]
    positions: list[int]
    token_ids: list[int | None]
    foil_ids: list[int | None]
    kind: str
    description: str = ""

    def evaluate(self, adapter, tokens, embed=None, fwd_hooks=()):
        uniq = sorted(set(self.positions))
        logits = adapter.logits(tokens, embed=embed, positions=uniq, fwd_hooks=fwd_hooks)
        return self.score(logits, {p: i for i, p in enumerate(uniq)})

    def score(
        self, logits: Float[Tensor, "batch k vocab"], index: dict[int, int] | None = None
    ) -> Float[Tensor, "batch rows"]:
        """The target rows read from ``logits``; ``index`` maps a prompt position to its column
        in ``logits`` (default: the logits cover every position)."""
        cols = [
            _score_logits(logits[:, p if index is None else index[p]], self.kind, t, f)
            for p, t, f in zip(self.positions, self.token_ids, self.foil_ids)
        ]
        return torch.stack(cols, dim=-1)


def evaluate_hooked(
    adapter: ModelAdapter,
    plan: Plan,
    tokens: Int[Tensor, "batch pos"],
    embed: Float[Tensor, "batch pos d_model"] | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
) -> Float[Tensor, "batch rows"]:
    """``plan.evaluate``, except that a logit target runs the whole forward (final norm and
    unembedding included) inside the hooks. ``adapter.logits`` applies ``ln_final`` after its
    hooks are gone, so a hook on ``ln_final.hook_scale`` (freezing the final norm) would
    silently not apply there."""
    if not isinstance(plan, LogitPlan):
        return plan.evaluate(adapter, tokens, embed, fwd_hooks=fwd_hooks)
    return plan.score(hooked_logits(adapter, tokens, embed, fwd_hooks))


def hooked_logits(
    adapter: ModelAdapter,
    tokens: Int[Tensor, "batch pos"],
    embed: Float[Tensor, "batch pos d_model"] | None = None,
    fwd_hooks: Sequence[tuple[str, Callable]] = (),
) -> Float[Tensor, "batch pos vocab"]:
    """The model's logits with ``fwd_hooks`` on for the whole forward (and ``embed`` in place of
    the token embeddings, applied before the other hooks)."""
    hooks = list(fwd_hooks)
    if embed is not None:
        hooks.insert(0, replace_embed(embed))
    with adapter.hooks(fwd_hooks=hooks):
        return adapter.model(tokens)


class Target:
    """Base class: describe what to explain; :meth:`plan` resolves it against a prompt."""

    def plan(self, adapter: ModelAdapter, prompt_tokens: Int[Tensor, "1 pos"]) -> Plan:
        raise NotImplementedError


def _check_kind(kind: str, allowed: Sequence[str]) -> str:
    if kind not in allowed:
        raise TargetError(f"Unknown target kind {kind!r}; choose one of {list(allowed)}.")
    return kind


def _greedy(adapter: ModelAdapter, tokens: Tensor, position: int) -> int:
    with torch.no_grad():
        return int(adapter.logits(tokens, positions=[position])[0, 0].argmax())


@dataclass
class NextToken(Target):
    """Score of one or more candidate next tokens at ``position`` (default: the last prompt token).

    ``token=None`` explains the model's own greedy prediction."""

    token: str | int | Sequence[str | int] | None = None
    kind: str = "log_prob"
    position: int | None = None

    def plan(self, adapter, prompt_tokens):
        _check_kind(self.kind, LOGIT_KINDS)
        n = prompt_tokens.shape[-1]
        pos = resolve_position(self.position, n)
        if self.token is None:
            ids = [_greedy(adapter, prompt_tokens, pos)]
        elif isinstance(self.token, (str, int)):
            ids = [adapter.single_token(self.token)]
        else:
            ids = [adapter.single_token(t) for t in self.token]
            if not ids:
                raise TargetError("The list of target tokens is empty.")
        labels = [adapter.str_tokens([i])[0] for i in ids]
        return LogitPlan(
            tokens=prompt_tokens,
            labels=labels,
            positions=[pos] * len(ids),
            token_ids=list(ids),
            foil_ids=[None] * len(ids),
            kind=self.kind,
            description=f"{self.kind} of the next token at position {pos}",
        )


@dataclass
class Contrast(Target):
    """Target versus foil at one position, e.g. ' is' vs ' are' (Yin & Neubig 2022)."""

    token: str | int
    foil: str | int
    kind: str = "logit_diff"
    position: int | None = None

    def plan(self, adapter, prompt_tokens):
        _check_kind(self.kind, CONTRAST_KINDS)
        t = adapter.single_token(self.token, "target")
        f = adapter.single_token(self.foil, "contrast (foil)")
        if t == f:
            raise TargetError(
                f"The contrast token {self.foil!r} is the target itself; a contrastive target needs "
                "two different tokens (e.g. target=' is', contrast=' are')."
            )
        pos = resolve_position(self.position, prompt_tokens.shape[-1])
        ts, fs = adapter.str_tokens([t, f])
        return LogitPlan(
            tokens=prompt_tokens,
            labels=[f"{ts!r} vs {fs!r}"],
            positions=[pos],
            token_ids=[t],
            foil_ids=[f],
            kind=self.kind,
            description=f"{self.kind} of target vs foil at position {pos}",
        )


@dataclass
class ForcedContinuation(Target):
    """Append a continuation and attribute each of its tokens separately (teacher forcing).

    Row ``i`` explains token ``i`` of the continuation given the prompt and continuation tokens
    before it; sources include the earlier continuation tokens."""

    text: str | Sequence[int]
    kind: str = "log_prob"

    def plan(self, adapter, prompt_tokens):
        _check_kind(self.kind, LOGIT_KINDS)
        if isinstance(self.text, str):
            ids = adapter.encode_continuation(self.text)
        else:
            ids = [adapter.single_token(int(i)) for i in self.text]
        if not ids:
            raise TargetError("The forced continuation is empty.")
        n = prompt_tokens.shape[-1]
        full = torch.cat(
            [prompt_tokens, torch.tensor([ids[:-1]], dtype=torch.long, device=prompt_tokens.device)],
            dim=-1,
        )
        adapter.check_length(full)
        return LogitPlan(
            tokens=full,
            labels=adapter.str_tokens(ids),
            positions=[n - 1 + i for i in range(len(ids))],
            token_ids=list(ids),
            foil_ids=[None] * len(ids),
            kind=self.kind,
            description=f"{self.kind} of each token of a forced continuation",
        )


@dataclass
class Generate(Target):
    """Greedy-generate ``n_tokens`` then attribute each generated token (no KV cache: the TL 4.3
    bridge's cached generate is wrong on grouped-query models)."""

    n_tokens: int = 5
    kind: str = "log_prob"

    def plan(self, adapter, prompt_tokens):
        if not isinstance(self.n_tokens, int) or self.n_tokens < 1:
            raise TargetError(f"Generate needs n_tokens >= 1, got {self.n_tokens!r}.")
        toks = prompt_tokens
        ids: list[int] = []
        for _ in range(self.n_tokens):
            nxt = _greedy(adapter, toks, toks.shape[-1] - 1)
            ids.append(nxt)
            toks = adapter.check_length(
                torch.cat([toks, torch.tensor([[nxt]], device=toks.device)], dim=-1)
            )
        plan = ForcedContinuation(ids, kind=self.kind).plan(adapter, prompt_tokens)
        plan.description = f"{self.kind} of each of {self.n_tokens} greedily generated tokens"
        return plan


@dataclass
class _FunctionPlan(Plan):
    tokens: Tensor
    labels: list[str]
    positions: list[int]
    token_ids: list[int | None]
    fn: Callable
    description: str = ""

    def evaluate(self, adapter, tokens, embed=None, fwd_hooks=()):
        logits = adapter.logits(tokens, embed=embed, fwd_hooks=fwd_hooks)
        out = self.fn(logits, tokens)
        if not isinstance(out, Tensor):
            raise TargetError("A target function must return a torch tensor of shape [batch] or [batch, rows].")
        if out.dim() == 1:
            out = out[:, None]
        if out.shape != (tokens.shape[0], self.n_rows):
            raise TargetError(
                f"The target function returned shape {tuple(out.shape)}; expected "
                f"[{tokens.shape[0]}] or [{tokens.shape[0]}, {self.n_rows}]."
            )
        return out


@dataclass
class FunctionTarget(Target):
    """Any differentiable function ``fn(logits[batch, pos, vocab], tokens[batch, pos]) -> [batch]``
    (or ``[batch, rows]`` with ``labels`` naming the rows)."""

    fn: Callable[[Tensor, Tensor], Tensor]
    label: str | Sequence[str] = "f(x)"
    position: int | None = None

    def plan(self, adapter, prompt_tokens):
        if not callable(self.fn):
            raise TargetError("FunctionTarget needs a callable.")
        labels = [self.label] if isinstance(self.label, str) else list(self.label)
        pos = resolve_position(self.position, prompt_tokens.shape[-1])
        return _FunctionPlan(
            tokens=prompt_tokens,
            labels=labels,
            positions=[pos] * len(labels),
            token_ids=[None] * len(labels),
            fn=self.fn,
            description="user function of the logits",
        )


def make_target(
    target: Any = None,
    contrast: Any = None,
    kind: str | None = None,
    position: int | None = None,
) -> Target:
    """Turn the convenient forms accepted by :func:`mechattr.attribute` into a :class:`Target`."""
    if isinstance(target, Target):
        if contrast is not None:
            raise TargetError("Give contrast= only with a plain token target, not with a Target object.")
        return target
    if callable(target) and not isinstance(target, (str, int)):
        return FunctionTarget(target, position=position)
    if contrast is not None:
        if target is None:
            raise TargetError("contrast= needs a target token too, e.g. target=' is', contrast=' are'.")
        return Contrast(target, contrast, kind=kind or "logit_diff", position=position)
    return NextToken(target, kind=kind or "log_prob", position=position)


__all__ = [
    "Target",
    "Plan",
    "LogitPlan",
    "NextToken",
    "Contrast",
    "ForcedContinuation",
    "Generate",
    "FunctionTarget",
    "make_target",
    "resolve_position",
    "LOGIT_KINDS",
    "CONTRAST_KINDS",
]
