"""Evaluate a target on many perturbed copies of one input, in batched forward passes.

A perturbation is a boolean mask over the input positions (``True`` = this token is removed or
replaced) together with a *replacement* strategy that says what takes its place:

============== ==========================================================================
``"delete"``   the token is dropped; the sequence gets shorter (see "Deletion" below)
``"unk"``      the tokenizer's unknown token (likewise ``"mask"``, ``"pad"``, ``"eos"``,
               ``"bos"``); a :class:`~mechattr.errors.MethodError` if the tokenizer has none
``"zero"``     a zero token embedding (positional embeddings stay)
``"mean"``     the mean token embedding (mean over the rows of ``W_E``)
``int``        an explicit token id
``"plausible"`` a token the model itself finds plausible there: sampled (seeded) from its
               next-token distribution at the previous position, excluding the original token;
               drawn once per position per seed, so every mask sees the same replacement
``"auto"``     ``"unk"`` when the tokenizer has an unknown token that is not also its BOS/EOS
               (GPT-2's ``<|endoftext|>`` is a document separator, not a neutral blank),
               else ``"zero"``
============== ==========================================================================

Fixed positions (``ctx.fixed``: the BOS token) are never perturbed: their mask bits are cleared.

Deletion
    Dropping tokens shifts every later position to the left. Each target row reads its value at a
    position of the *original* input; after deletion it reads at the shifted position of the same
    token. A row's own read position is never deleted for that row (the token whose prediction is
    explained must exist); other rows may still see it deleted, so rows with different read
    positions (a forced continuation) may be evaluated on different sequences. Sequences are
    grouped by length and read positions and evaluated in batches. Deletion needs a target plan
    that is a dataclass with a ``positions`` field (every built-in plan is); a
    :class:`~mechattr.FunctionTarget` receives the logits of the shortened sequence.

Validation reuses these pieces for deletion/insertion curves: :func:`deletion_masks`,
:func:`insertion_masks`, :func:`perturbed_values` and :func:`resolve_replacement`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from einops import repeat
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .tl import prefix
from .contract import Context
from .errors import MethodError
from .targets import Plan
from .tl.adapter import ModelAdapter

SPECIAL_REPLACEMENTS = ("unk", "mask", "pad", "eos", "bos")
REPLACEMENTS = ("auto", "delete", "zero", "mean", "plausible") + SPECIAL_REPLACEMENTS

# Generator offset for the "plausible" draws, so they never share a stream with a method's masks.
PLAUSIBLE_SEED_OFFSET = 7919


@dataclass(frozen=True)
class Replacement:
    """A resolved replacement strategy.

    ``kind`` is ``"delete"``, ``"token"`` (``token_ids[pos]`` replaces the token at ``pos``) or
    ``"embed"`` (``embed[pos]`` replaces the token embedding at ``pos``); ``name`` is the
    JSON-friendly description stored in a result's params."""

    kind: str
    name: Any
    token_ids: Int[Tensor, " pos"] | None = None
    embed: Float[Tensor, "pos d_model"] | None = None


def _special_id(adapter: ModelAdapter, name: str) -> int:
    tid = adapter.special_token_id(name)
    if tid is None:
        raise MethodError(
            f"The tokenizer has no {name} token, so replacement={name!r} is undefined. Use "
            "replacement='zero', 'mean', 'delete', 'plausible', another special token, or a token id."
        )
    return int(tid)


def default_replacement(adapter: ModelAdapter) -> str:
    """``"unk"`` when the tokenizer has a dedicated unknown token, else ``"zero"``."""
    unk = adapter.special_token_id("unk")
    taken = {adapter.special_token_id("bos"), adapter.special_token_id("eos")}
    return "unk" if unk is not None and unk not in taken else "zero"


def next_token_probs(
    adapter: ModelAdapter, tokens: Int[Tensor, "1 pos"], exclude_original: bool = True
) -> Float[Tensor, "pos vocab"]:
    """Row ``p``: the model's distribution over the token at position ``p`` given the tokens
    before it (its next-token prediction at ``p - 1``), in float64 on the CPU.

    Position 0 has no context: it gets the prediction after a lone BOS (or EOS) token, or the
    uniform distribution when the tokenizer has neither. With ``exclude_original`` the token that
    is actually there gets probability 0, so a draw always changes the input."""
    n = tokens.shape[-1]
    with torch.no_grad(), adapter.guard():
        logits = adapter.logits(tokens)[0].double().cpu()  # [pos, vocab]
        start = adapter.special_token_id("bos")
        if start is None:
            start = adapter.special_token_id("eos")
        if start is not None:
            first = adapter.logits(torch.tensor([[int(start)]], device=tokens.device))[0, 0]
            first = torch.softmax(first.double().cpu(), -1)
        else:
            first = torch.full((logits.shape[-1],), 1.0 / logits.shape[-1], dtype=torch.float64)
    probs = torch.cat([first[None], torch.softmax(logits[: n - 1], -1)], dim=0)
    probs = probs[:, : adapter.d_vocab]
    if exclude_original:
        probs = probs.scatter(1, tokens[0].cpu()[:, None], 0.0)
    # A distribution that put all its mass on the original token falls back to uniform.
    empty = probs.sum(-1, keepdim=True) <= 0
    probs = torch.where(empty, torch.ones_like(probs), probs)
    if exclude_original:
        probs = probs.scatter(1, tokens[0].cpu()[:, None], 0.0)
    return probs / probs.sum(-1, keepdim=True)


def sample_tokens(
    probs: Float[Tensor, "pos vocab"], n: int, generator: torch.Generator
) -> Int[Tensor, "n pos"]:
    """``n`` independent draws per position from per-position distributions."""
    draws = torch.multinomial(probs, n, replacement=True, generator=generator)  # [pos, n]
    return draws.T.contiguous()


def resolve_replacement(ctx: Context, replacement: Any = "auto", seed_offset: int = 0) -> Replacement:
    """Turn a replacement spec (see the module docstring) into a :class:`Replacement`.

    ``"plausible"`` draws use ``ctx.generator(PLAUSIBLE_SEED_OFFSET + seed_offset)``."""
    if isinstance(replacement, Replacement):
        return replacement
    a: ModelAdapter = ctx.adapter
    tokens = ctx.tokens
    n = tokens.shape[-1]
    if isinstance(replacement, bool):
        raise MethodError("replacement cannot be a bool; give a name or a token id.")
    if isinstance(replacement, int):
        if not 0 <= replacement < a.d_vocab:
            raise MethodError(f"Replacement token id {replacement} is outside the vocabulary [0, {a.d_vocab}).")
        ids = torch.full((n,), int(replacement), dtype=torch.long, device=tokens.device)
        return Replacement("token", int(replacement), token_ids=ids)
    if not isinstance(replacement, str):
        raise MethodError(
            f"replacement must be one of {list(REPLACEMENTS)} or a token id, got {type(replacement).__name__}."
        )
    name = replacement.lower()
    if name == "auto":
        name = default_replacement(a)
    if name == "delete":
        return Replacement("delete", "delete")
    if name in SPECIAL_REPLACEMENTS:
        ids = torch.full((n,), _special_id(a, name), dtype=torch.long, device=tokens.device)
        return Replacement("token", name, token_ids=ids)
    if name == "zero":
        x = ctx.input_embed()[0]
        return Replacement("embed", "zero", embed=torch.zeros_like(x))
    if name == "mean":
        x = ctx.input_embed()[0]
        mean = a.W_E.detach().mean(0).to(x)
        return Replacement("embed", "mean", embed=repeat(mean, "d -> p d", p=n).clone())
    if name == "plausible":
        probs = next_token_probs(a, tokens)
        ids = sample_tokens(probs, 1, ctx.generator(PLAUSIBLE_SEED_OFFSET + seed_offset))[0]
        return Replacement("token", "plausible", token_ids=ids.to(tokens.device))
    raise MethodError(f"Unknown replacement {replacement!r}; choose one of {list(REPLACEMENTS)} or a token id.")


def check_masks(ctx: Context, masks: Tensor) -> Bool[Tensor, "n pos"]:
    """Masks as a 2-D bool tensor on the input's device, fixed (BOS) positions cleared."""
    if not isinstance(masks, Tensor):
        masks = torch.as_tensor(masks)
    if masks.dim() == 1:
        masks = masks[None]
    if masks.dim() != 2 or masks.shape[-1] != ctx.n_pos:
        raise MethodError(f"Masks must have shape [n, {ctx.n_pos}] (one flag per input position), got {tuple(masks.shape)}.")
    masks = masks.to(device=ctx.tokens.device, dtype=torch.bool)
    if ctx.fixed is not None:
        masks = masks & ~ctx.fixed.to(masks.device)[None]
    return masks


def _evaluate(ctx: Context, plan: Plan, tokens: Tensor, embeds: Tensor | None = None) -> Tensor:
    return plan.evaluate(ctx.adapter, tokens, embeds)


def perturbed_values(
    ctx: Context,
    masks: Bool[Tensor, "n pos"],
    replacement: Any = "auto",
) -> Float[Tensor, "n rows"]:
    """The target (every row of ``ctx.plan``) on ``n`` perturbed copies of the input.

    ``masks[i, p]`` True removes/replaces token ``p`` in copy ``i``; the replacement is a name,
    a token id or a :class:`Replacement` from :func:`resolve_replacement` (resolve once and
    reuse it when calling repeatedly with ``"plausible"``). Copies are evaluated without
    gradients in batches of ``ctx.max_batch(with_grad=False)``, so the result does not depend on
    how they are split."""
    masks = check_masks(ctx, masks)
    rep = resolve_replacement(ctx, replacement)
    n = masks.shape[0]
    rows = ctx.plan.n_rows
    if n == 0:
        return torch.zeros(0, rows, device=ctx.tokens.device)
    if rep.kind == "delete":
        return _deleted_values(ctx, masks)
    out = []
    base = ctx.tokens[0]
    # Rows sorted by their first changed position share the longest prefixes within a batch;
    # mechattr.tl.prefix computes the unperturbed prefix once (results are put back in order).
    order = prefix.sort_order(masks) if prefix.enabled() else None
    if order is not None:
        masks = masks[order]
    with torch.no_grad(), prefix.reuse(ctx):
        for sl in ctx.batches(n, with_grad=False):
            m = masks[sl]
            if rep.kind == "token":
                toks = torch.where(m, rep.token_ids[None], base[None])
                out.append(_evaluate(ctx, ctx.plan, toks))
            else:
                x = ctx.input_embed()[0]
                emb = torch.where(m[..., None], rep.embed[None], x[None])
                out.append(_evaluate(ctx, ctx.plan, base[None].expand(m.shape[0], -1), emb))
    vals = torch.cat(out, dim=0)
    if order is not None:
        vals = torch.empty_like(vals).index_copy_(0, order, vals)
    return vals


def _deleted_values(ctx: Context, masks: Bool[Tensor, "n pos"]) -> Float[Tensor, "n rows"]:
    plan = ctx.plan
    if not (dataclasses.is_dataclass(plan) and "positions" in {f.name for f in dataclasses.fields(plan)}):
        raise MethodError(
            f"replacement='delete' needs a target that reads at given positions; {type(plan).__name__} "
            "does not. Use a token replacement ('unk', 'pad', 'plausible', a token id) or 'zero'."
        )
    n, P = masks.shape
    dev = masks.device
    read = torch.tensor(plan.positions, dtype=torch.long, device=dev)  # [rows]
    uq, row_group = torch.unique(read, return_inverse=True)  # distinct read positions
    ar = torch.arange(P, device=dev)
    # keep[i, u]: what copy i keeps when evaluated for rows reading at uq[u].
    keep = ~masks[:, None, :] | (ar[None, None, :] == uq[None, :, None])  # [n, U, P]
    seqs, seq_of = torch.unique(keep.reshape(-1, P), dim=0, return_inverse=True)
    seq_of = seq_of.reshape(n, len(uq))
    lengths = seqs.sum(-1)
    # Shifted read position of every row in every distinct sequence (unused where deleted).
    new_pos = (seqs.long().cumsum(-1) - 1).clamp_min(0)[:, read]  # [m, rows]
    key = torch.cat([lengths[:, None], new_pos], dim=-1)
    groups, group_of = torch.unique(key, dim=0, return_inverse=True)
    vals = torch.zeros(seqs.shape[0], plan.n_rows, dtype=torch.float64, device=dev)
    dtype = None
    base = ctx.tokens[0]
    with torch.no_grad():
        for g in range(groups.shape[0]):
            members = torch.nonzero(group_of == g).flatten()
            L = int(groups[g, 0])
            toks_all = base[None].expand(len(members), -1)[seqs[members]].reshape(len(members), L)
            short = dataclasses.replace(plan, tokens=toks_all[:1], positions=groups[g, 1:].tolist())
            for sl in ctx.batches(len(members), with_grad=False):
                v = _evaluate(ctx, short, toks_all[sl])
                vals[members[sl]] = v.double()
                dtype = v.dtype
    # Row r of copy i comes from the sequence built for r's read position.
    idx = seq_of[:, row_group]  # [n, rows]
    return vals.gather(0, idx).to(dtype)


def deleted_tokens(ctx: Context, mask: Bool[Tensor, " pos"], row: int = 0) -> tuple[Int[Tensor, "1 len"], int]:
    """The shortened input that ``replacement='delete'`` evaluates for target ``row`` and the
    row's shifted read position (for inspection and tests)."""
    m = check_masks(ctx, mask)[0]
    q = int(ctx.plan.positions[row])
    keep = ~m
    keep[q] = True
    return ctx.tokens[:, keep], int(keep[: q + 1].sum()) - 1


# ----- features: tokens or user spans ---------------------------------------------------------


@dataclass(frozen=True)
class Features:
    """The units a perturbation method switches on and off: single free tokens or user spans.

    ``membership[f, p]`` is True when position ``p`` belongs to feature ``f``. Positions in no
    feature are never perturbed and score 0."""

    membership: Bool[Tensor, "F pos"]
    spans: list[tuple[int, int]]

    @property
    def n(self) -> int:
        return int(self.membership.shape[0])

    def masks(self, absent: Bool[Tensor, "n F"]) -> Bool[Tensor, "n pos"]:
        """Token masks for feature coalitions (``absent[i, f]`` True removes feature ``f``)."""
        hit = absent.to(self.membership.device).double() @ self.membership.double()
        return hit > 0

    def spread(self, phi: Float[Tensor, "... F"]) -> Float[Tensor, "... pos"]:
        """Token scores from feature scores: each token of a feature gets the feature's score
        divided by the feature's length, so sums over tokens equal sums over features."""
        m = self.membership.to(device=phi.device, dtype=phi.dtype)
        size = m.sum(-1).clamp_min(1)
        return (phi / size) @ m


def make_features(ctx: Context, spans: Sequence[Sequence[int]] | None = None) -> Features:
    """Every free token its own feature, or one feature per span ``(start, end)`` (end
    exclusive, positions of the full input including BOS). Spans must be disjoint, non-empty and
    avoid fixed positions."""
    P = ctx.n_pos
    free = ctx.free.to("cpu")
    if spans is None:
        idx = torch.nonzero(free).flatten()
        mem = torch.zeros(len(idx), P, dtype=torch.bool)
        mem[torch.arange(len(idx)), idx] = True
        return Features(mem.to(ctx.tokens.device), [(int(i), int(i) + 1) for i in idx])
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence) or len(spans) == 0:
        raise MethodError("spans must be a non-empty list of (start, end) pairs, e.g. spans=[(1, 3), (3, 5)].")
    out: list[tuple[int, int]] = []
    mem = torch.zeros(len(spans), P, dtype=torch.bool)
    for f, sp in enumerate(spans):
        if isinstance(sp, (str, bytes)) or not isinstance(sp, Sequence) or len(sp) != 2:
            raise MethodError(f"Span {sp!r} is not a (start, end) pair.")
        a, b = sp
        if any(isinstance(v, bool) or not isinstance(v, int) for v in (a, b)):
            raise MethodError(f"Span {sp!r}: start and end must be ints.")
        if not 0 <= a < b <= P:
            raise MethodError(f"Span ({a}, {b}) is empty or outside the input positions 0..{P} (end is exclusive).")
        if bool((~free[a:b]).any()):
            raise MethodError(
                f"Span ({a}, {b}) covers a fixed position (the BOS token, which is never perturbed). "
                "Start spans after it, or pass attribute_bos=True."
            )
        if bool(mem[:, a:b].any()):
            raise MethodError(f"Span ({a}, {b}) overlaps another span; give disjoint spans.")
        mem[f, a:b] = True
        out.append((int(a), int(b)))
    return Features(mem.to(ctx.tokens.device), out)


# ----- masks for curves -----------------------------------------------------------------------


def deletion_masks(order: Int[Tensor, " k"], n_pos: int) -> Bool[Tensor, "k_plus_1 pos"]:
    """Row ``j`` removes the first ``j`` positions of ``order`` (most important first), ``j = 0..k``:
    the inputs of a deletion (MoRF) curve."""
    order = torch.as_tensor(order, dtype=torch.long).reshape(-1)
    k = order.numel()
    rank = torch.full((n_pos,), k + 1, dtype=torch.long)
    rank[order] = torch.arange(k)
    return rank[None, :] < torch.arange(k + 1)[:, None]


def insertion_masks(
    order: Int[Tensor, " k"], n_pos: int, free: Bool[Tensor, " pos"] | None = None
) -> Bool[Tensor, "k_plus_1 pos"]:
    """Row ``j`` removes every free position except the first ``j`` of ``order``: the inputs of
    an insertion curve (row 0 is the fully perturbed input)."""
    keep = deletion_masks(order, n_pos)
    free = torch.ones(n_pos, dtype=torch.bool) if free is None else free.to("cpu").bool()
    return free[None] & ~keep


__all__ = [
    "REPLACEMENTS",
    "Replacement",
    "Features",
    "default_replacement",
    "resolve_replacement",
    "next_token_probs",
    "sample_tokens",
    "check_masks",
    "perturbed_values",
    "deleted_tokens",
    "make_features",
    "deletion_masks",
    "insertion_masks",
]
