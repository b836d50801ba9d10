"""``attribute``: the one entry point that turns (model, text, target, method) into an Attribution."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from .tl.adapter import ModelAdapter, as_adapter
from .tl.prefix import diagnostics as prefix_diagnostics
from .attribution import Attribution
from .errors import InputError, MethodError
from .options import RunOptions
from .contract import Context, MethodFn, MethodOutput
from .registry import check_params, get_method
from .targets import Plan, Target, make_target


def prompt_tokens(adapter: ModelAdapter, text: Any) -> tuple[Int[Tensor, "1 pos"], str | None]:
    """(token ids, the prompt text or None) of a prompt given as text or as a 1-D tensor of ids."""
    if isinstance(text, str):
        return adapter.tokenize(text), text
    if isinstance(text, Tensor) and not text.is_floating_point():
        toks = text.reshape(1, -1).to(adapter.device).long()
        if toks.numel() == 0:
            raise InputError("The token tensor is empty.")
        return adapter.check_length(toks), None
    raise InputError(
        f"Give the prompt as a string (or a 1-D tensor of token ids), got {type(text).__name__}."
    )


def fixed_positions(adapter: ModelAdapter, tokens: Int[Tensor, "1 pos"], attribute_bos: bool) -> Bool[Tensor, " pos"]:
    """Positions never attributed: the BOS token the model prepends, unless ``attribute_bos``."""
    fixed = torch.zeros(tokens.shape[-1], dtype=torch.bool, device=tokens.device)
    bos = adapter.special_token_id("bos")
    if not attribute_bos and adapter.prepend_bos and bos is not None and int(tokens[0, 0]) == bos:
        fixed[0] = True
    return fixed


def make_context(
    adapter: ModelAdapter,
    plan: Plan,
    *,
    attribute_bos: bool = False,
    memory_mb: float = 2048.0,
    batch_size: int | None = None,
    seed: int = 0,
    quiet: bool = True,
) -> Context:
    """The :class:`~mechattr.Context` a method is called with (run options checked here)."""
    RunOptions(memory_mb=memory_mb, batch_size=batch_size).check()
    return Context(
        adapter=adapter,
        plan=plan,
        memory_mb=float(memory_mb),
        batch_size=batch_size,
        seed=int(seed),
        quiet=quiet,
        fixed=fixed_positions(adapter, plan.tokens, attribute_bos),
    )


def call_method(
    ctx: Context,
    fn: MethodFn,
    params: dict[str, Any],
    label: str,
    *,
    attribute_bos: bool = False,
    prompt: str | None = None,
) -> Attribution:
    """Run ``fn(ctx, **params)`` with the model guarded and turn its output into an Attribution:
    the one path from a method's output to a result (api, validation, dataset runs, reports)."""
    t0 = time.perf_counter()
    with ctx.adapter.guard():
        out = fn(ctx, **params)
    seconds = time.perf_counter() - t0
    if not isinstance(out, MethodOutput):
        raise MethodError(f"The method {label!r} must return a mechattr MethodOutput, got {type(out).__name__}.")
    return to_attribution(ctx, out, label, seconds=seconds, attribute_bos=attribute_bos, prompt=prompt)


def to_attribution(
    ctx: Context,
    out: MethodOutput,
    method: str,
    *,
    seconds: float,
    attribute_bos: bool = False,
    prompt: str | None = None,
) -> Attribution:
    """The :class:`~mechattr.Attribution` of a method's output on ``ctx``."""
    adapter, plan = ctx.adapter, ctx.plan
    return Attribution(
        tokens=adapter.str_tokens(plan.tokens),
        token_ids=plan.tokens[0].tolist(),
        targets=list(plan.labels),
        target_positions=list(plan.positions),
        scores=out.scores.detach().to("cpu").float(),
        dims=tuple(out.dims),
        method=method,
        params={**out.params, "attribute_bos": attribute_bos},
        diagnostics={**out.diagnostics, **prefix_diagnostics(ctx), "seconds": seconds},
        prompt=prompt,
        model_name=adapter.name,
        target_description=plan.description,
        target_token_ids=list(plan.token_ids),
    )


def run_method(
    adapter: ModelAdapter,
    plan: Plan,
    method: str,
    params: dict[str, Any],
    *,
    attribute_bos: bool = False,
    memory_mb: float = 2048.0,
    batch_size: int | None = None,
    seed: int = 0,
    quiet: bool = True,
    prompt: str | None = None,
) -> Attribution:
    """Run a registered method on an already resolved plan (used by validation and the zoo)."""
    info = get_method(method)
    check_params(info, params)
    ctx = make_context(
        adapter, plan, attribute_bos=attribute_bos, memory_mb=memory_mb, batch_size=batch_size,
        seed=seed, quiet=quiet,
    )
    return call_method(ctx, info.fn, params, info.name, attribute_bos=attribute_bos, prompt=prompt)


def resolve(
    model: Any,
    text: Any,
    target: Any = None,
    *,
    contrast: Any = None,
    kind: str | None = None,
    position: int | None = None,
    prepend_bos: bool | None = None,
) -> tuple[ModelAdapter, Plan, str | None]:
    """(adapter, plan, prompt) for a model, a prompt and a target in any accepted form."""
    adapter = as_adapter(model, prepend_bos)
    tgt: Target = make_target(target, contrast, kind, position)
    with adapter.guard():
        toks, prompt = prompt_tokens(adapter, text)
        plan = tgt.plan(adapter, toks)
    return adapter, plan, prompt


def attribute(
    model: Any,
    text: str | Sequence[str] | Tensor,
    target: Any = None,
    *,
    method: str = "integrated_gradients",
    contrast: Any = None,
    kind: str | None = None,
    position: int | None = None,
    prepend_bos: bool | None = None,
    attribute_bos: bool = False,
    memory_mb: float = 2048.0,
    batch_size: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    **params: Any,
) -> Attribution | list[Attribution]:
    """Attribute a model's output on ``text`` to its input tokens.

    Args:
        model: a TransformerLens model (HookedTransformer or TransformerBridge) or anything
            :func:`mechattr.load_model` accepts is *not* loaded here: pass the loaded model.
        text: the prompt, a list of prompts (returns a list), or a 1-D tensor of token ids.
        target: what to explain. ``None``: the model's greedy next token; a string or id: that
            next token (``' Paris'``); a list of tokens: one target row each; a
            :class:`~mechattr.Target` (``ForcedContinuation``, ``Generate``, ``Contrast``,
            ``FunctionTarget``, probes, SAE features); or a callable of the logits.
        method: a registered method name or alias (``mechattr.list_methods()``).
        contrast: a foil token; the target becomes target-vs-foil (``kind='logit_diff'`` default).
        kind: ``log_prob`` (default), ``prob``, ``logit``; for contrasts ``logit_diff``,
            ``log_prob_diff``, ``prob_diff``.
        position: the prompt position whose prediction is explained (default: the last).
        prepend_bos: override the model's BOS policy.
        attribute_bos: also attribute the BOS token (by default it is held fixed, score 0).
        memory_mb: cap on activation memory per batch; steps are batched to fit.
        batch_size: explicit number of sequences per forward pass (overrides ``memory_mb``).
        seed: for stochastic methods and random baselines.
        quiet: no progress bar (bars appear only for calls that need more than one batch, and
            never under pytest or with ``MECHATTR_QUIET=1``).
        **params: the method's own parameters (``n_steps``, ``baseline``, ``reduce`` ...).
    """
    if isinstance(text, (list, tuple)):
        if not text:
            raise InputError("The list of prompts is empty.")
        return [
            attribute(
                model, t, target, method=method, contrast=contrast, kind=kind, position=position,
                prepend_bos=prepend_bos, attribute_bos=attribute_bos, memory_mb=memory_mb,
                batch_size=batch_size, seed=seed, quiet=quiet, **params,
            )
            for t in text
        ]
    check_params(get_method(method), params)
    adapter = as_adapter(model, prepend_bos)
    with adapter.guard():  # one capture/restore of the model's state for the whole call
        adapter, plan, prompt = resolve(
            adapter, text, target, contrast=contrast, kind=kind, position=position, prepend_bos=prepend_bos
        )
        return run_method(
            adapter, plan, method, params, attribute_bos=attribute_bos, memory_mb=memory_mb,
            batch_size=batch_size, seed=seed, quiet=quiet, prompt=prompt,
        )


# The older private names (kept for code written against them).
_prompt_tokens = prompt_tokens
_fixed_positions = fixed_positions
