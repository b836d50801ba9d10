"""Reference inputs for path methods (IG, GradientSHAP, DIG): built in the embedding space."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .contract import Context
from .errors import MethodError

TOKEN_BASELINES = ("pad", "eos", "bos", "unk", "mask")
NAMED_BASELINES = ("zero", "mean", "uniform", "gaussian") + TOKEN_BASELINES


def _one(ctx: Context, spec: Any, offset: int) -> Float[Tensor, "pos d_model"]:
    a = ctx.adapter
    x = ctx.input_embed()[0]
    pos, d = x.shape
    W_E = a.W_E.detach()
    if isinstance(spec, str):
        name = spec.lower()
        if name == "zero":
            return torch.zeros_like(x)
        if name == "mean":
            return W_E.mean(0).to(x.dtype).expand(pos, d).clone()
        if name == "uniform":
            lo, hi = W_E.min(0).values, W_E.max(0).values
            u = torch.rand(pos, d, generator=ctx.generator(1000 + offset), dtype=torch.float64)
            return (lo.double().cpu() + u * (hi - lo).double().cpu()).to(x)
        if name == "gaussian":
            sd = float(W_E.float().std())
            n = torch.randn(pos, d, generator=ctx.generator(2000 + offset), dtype=torch.float64)
            return (n * sd).to(x)
        if name in TOKEN_BASELINES:
            tid = a.special_token_id(name)
            if tid is None:
                raise MethodError(
                    f"The tokenizer has no {name} token, so baseline={name!r} is undefined. "
                    "Use baseline='zero', 'mean', another special token, or explicit token ids."
                )
            return a.embed(torch.full_like(ctx.tokens, int(tid)))[0]
        raise MethodError(
            f"Unknown baseline {spec!r}; choose one of {list(NAMED_BASELINES)}, a token id, "
            "a list of token ids (one per position), an embedding tensor [pos, d_model], "
            "or a list of these to average over."
        )
    if isinstance(spec, bool):
        raise MethodError("A baseline cannot be a bool.")
    if isinstance(spec, int):
        if not 0 <= spec < a.d_vocab:
            raise MethodError(f"Baseline token id {spec} is outside the vocabulary [0, {a.d_vocab}).")
        return a.embed(torch.full_like(ctx.tokens, spec))[0]
    if isinstance(spec, Tensor) and spec.is_floating_point():
        if spec.shape != x.shape:
            raise MethodError(f"A baseline embedding must have shape {tuple(x.shape)}, got {tuple(spec.shape)}.")
        return spec.to(x)
    if isinstance(spec, (Tensor, Sequence)):
        ids = torch.as_tensor(spec, dtype=torch.long).reshape(-1)
        if ids.numel() != pos:
            raise MethodError(
                f"Baseline token ids must give one id per position ({pos}), got {ids.numel()}."
            )
        if int(ids.min()) < 0 or int(ids.max()) >= a.d_vocab:
            raise MethodError("Baseline token ids must lie inside the vocabulary.")
        return a.embed(ids[None].to(ctx.tokens.device))[0]
    raise MethodError(f"Cannot build a baseline from {type(spec).__name__}.")


def auto_baseline(ctx: Context) -> str:
    """The baseline ``baseline="auto"`` stands for: ``"zero"``, unless the zero embedding is a
    degenerate point of the model, then the pad token (else eos, unk, the mean embedding).

    Degenerate means the target positions' logits at the zero baseline are all equal. That
    happens in models with no biases and no learned position embeddings (Llama-style, e.g.
    SmolLM2): a zero token embedding keeps the whole residual stream at zero, every RMSNorm there
    amplifies by 1/sqrt(eps), and the target along the path from it is rough at every scale
    (measured on SmolLM2: f(0) = -10.80, f(1e-6 x) = -13.21, f(1e-4 x) = -18.68) and its gradient
    at zero is not finite -- no quadrature integrates that. Zero stays the default elsewhere
    because it is the common reference (Sundararajan et al. 2017; Captum, Inseq)."""
    B = build_baselines(ctx, "zero")
    positions = sorted(set(getattr(ctx.plan, "positions", None) or [ctx.n_pos - 1]))
    with torch.no_grad():
        logits = ctx.adapter.logits(ctx.tokens, embed=B, positions=positions)
    spread = (logits.amax(-1) - logits.amin(-1)).max()
    if float(spread) > 1e-6 * max(1.0, float(logits.abs().max())):
        return "zero"
    for name in ("pad", "eos", "unk"):
        if ctx.adapter.special_token_id(name) is not None:
            return name
    return "mean"


def is_multi(spec: Any) -> bool:
    """A list of baselines (to average over) rather than one list of per-position token ids."""
    return isinstance(spec, (list, tuple)) and len(spec) > 0 and any(
        isinstance(s, (str, Tensor, list, tuple)) for s in spec
    )


def build_baselines(ctx: Context, spec: Any) -> Float[Tensor, "n_baselines pos d_model"]:
    """Baseline embeddings; fixed (BOS) positions keep the input embedding."""
    specs = list(spec) if is_multi(spec) else [spec]
    x = ctx.input_embed()[0]
    out = torch.stack([_one(ctx, s, i) for i, s in enumerate(specs)])
    if ctx.fixed is not None and bool(ctx.fixed.any()):
        out[:, ctx.fixed] = x[ctx.fixed]
    return out


def data_baselines(
    ctx: Any, data: Any, n: int, generator: torch.Generator
) -> tuple[Float[Tensor, "n pos d_model"], Tensor]:
    """Baselines from data: embeddings of real token sequences (expected gradients, Erion et al.
    2021; Captum's GradientShap draws its baselines from a data distribution).

    ``data``: a list of texts, or token ids ``[n_seq, len]`` (a tensor or nested lists), from
    which ``n`` windows as long as the attributed (free) positions are cut at random offsets; a
    sequence exactly that long is one window. ``None``: each window is ``n_free`` token ids drawn
    uniformly from the vocabulary (real tokens in random order; used when no data is at hand).
    Fixed (BOS) positions keep the input. Returns (embeddings, token ids ``[n, pos]``)."""
    a = ctx.adapter
    toks = ctx.tokens[0]
    free = ctx.free
    m = int(free.sum())
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise MethodError(f"n_baselines must be an integer >= 1, got {n!r}.")
    if data is None:
        windows = torch.randint(0, a.d_vocab, (n, m), generator=generator)
    else:
        seqs: list[Tensor] = []
        items = [data] if isinstance(data, str) else data
        if isinstance(items, (list, tuple)) and items and all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            items = [list(items)]  # one sequence of token ids
        if isinstance(items, Tensor):
            items = list(items.reshape(-1, items.shape[-1])) if items.dim() > 1 else [items]
        for it in items:
            if isinstance(it, str):
                ids = torch.tensor(a.tokenizer(it, add_special_tokens=False)["input_ids"], dtype=torch.long)
            else:
                ids = torch.as_tensor(it, dtype=torch.long).reshape(-1).cpu()
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= a.d_vocab):
                raise MethodError("Baseline data token ids must lie inside the vocabulary.")
            if ids.numel() >= m:
                seqs.append(ids)
        if not seqs:
            raise MethodError(
                f"No baseline data sequence has the {m} tokens the prompt's attributed positions "
                "need; give longer texts (or token id rows) in data=."
            )
        which = torch.randint(0, len(seqs), (n,), generator=generator)
        rows = []
        for i in which.tolist():  # one window per baseline (n is small)
            L = seqs[i].numel()
            off = int(torch.randint(0, L - m + 1, (1,), generator=generator))
            rows.append(seqs[i][off : off + m])
        windows = torch.stack(rows)
    ids = toks[None].expand(n, -1).clone()
    ids[:, free] = windows.to(ids.device)
    return a.embed(ids), ids


def describe(spec: Any) -> Any:
    """JSON-friendly description of a baseline spec for the result's params."""
    if isinstance(spec, Tensor):
        return f"tensor{tuple(spec.shape)}" if spec.is_floating_point() else spec.tolist()
    if isinstance(spec, (list, tuple)):
        return [describe(s) for s in spec]
    return spec
