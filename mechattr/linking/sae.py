"""SAE features: as attribution targets, token → feature maps, and feature → output effects.

Any SAE-like object works (duck typing): ``encode(x) -> [.., d_sae]``, ``W_enc [d_in, d_sae]``,
``b_enc``, ``W_dec [d_sae, d_in]``, and its hook name from ``cfg.metadata.hook_name`` (SAELens
6), ``cfg.hook_name`` (older SAELens), a ``hook`` string attribute (mechattr.zoo SAEs) or given
explicitly. SAELens ``SAE`` objects qualify.

Token → feature map: for the top-k active features at a position, the input×gradient of each
feature's encoder pre-activation with respect to the token embeddings, for all k features in ONE
batched backward (one-hot output gradients on the pre-activations,
``torch.autograd.grad(..., is_grads_batched=True)``, as circuit-tracer does for its nodes;
Ameisen et al. 2025). The pre-activation is computed from exactly what the SAE was trained on
(:func:`sae_pre_activation`): SAELens' ``process_sae_in`` (run-time input normalisation such as
``normalize_activations="constant_norm_rescale"`` / ``"layer_norm"``, then ``- b_dec`` when
``apply_b_dec_to_input``), so a normalising SAE's per-token rescaling is differentiated too. For
an active ReLU/JumpReLU feature the pre-activation and the activation have the same gradient,
so this equals input×gradient of the feature itself.

Feature → output: ``activation_f · (∂decode/∂act_f · ∂target/∂x)``, the first-order effect of
each feature's decoder write (in the model's units: SAELens' ``decode`` undoes its input
normalisation) on the target. ``freeze=True`` holds attention patterns and norm scales at their
clean values, but MLPs stay nonlinear: the effect is then the gradient through a partly frozen
model, *not* a linear direct effect (that needs linear replacements of the MLPs as well, e.g.
transcoders in circuit-tracer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor

from ..tl.adapter import ModelAdapter, as_adapter
from ..attribution import Attribution
from ..errors import InputError, TargetError
from ..targets import Plan, Target, evaluate_hooked, resolve_position
from ..tl.hooks import Taps, frozen_hooks


# ----- duck typing -------------------------------------------------------------------------------
def sae_hook_name(sae: Any, hook: str | None = None) -> str:
    """The hook an SAE reads: ``hook`` if given, else from its config."""
    if hook:
        return hook
    if isinstance(getattr(sae, "hook", None), str) and sae.hook:  # mechattr.zoo SAEs
        return sae.hook
    cfg = getattr(sae, "cfg", None)
    for path in (("metadata", "hook_name"), ("hook_name",)):
        obj: Any = cfg
        for attr in path:
            obj = getattr(obj, attr, None) if obj is not None else None
            if obj is None and isinstance(cfg, dict):
                obj = cfg.get(attr)
        if isinstance(obj, str) and obj:
            return obj
    raise TargetError(
        "Cannot tell which hook this SAE reads: it has neither cfg.metadata.hook_name nor "
        "cfg.hook_name. Pass hook='blocks.0.hook_resid_post' (or the right name) explicitly."
    )


def sae_weights(sae: Any) -> tuple[Tensor, Tensor]:
    """(W_enc [d_in, d_sae], W_dec [d_sae, d_in]) of an SAE-like object, checked."""
    missing = [n for n in ("encode", "W_enc", "W_dec") if not hasattr(sae, n)]
    if missing:
        raise TargetError(
            f"This object is not SAE-like: it lacks {missing}. mechattr needs encode(x), "
            "W_enc [d_in, d_sae], b_enc and W_dec [d_sae, d_in] (SAELens SAEs have them)."
        )
    W_enc, W_dec = sae.W_enc, sae.W_dec
    if W_enc.dim() != 2 or W_dec.dim() != 2 or W_enc.shape != W_dec.T.shape:
        raise TargetError(
            f"SAE weights have unexpected shapes W_enc {tuple(W_enc.shape)}, W_dec "
            f"{tuple(W_dec.shape)}; expected [d_in, d_sae] and [d_sae, d_in]."
        )
    return W_enc, W_dec


def _check_feature_ids(features: Sequence[int], d_sae: int) -> list[int]:
    out = []
    for f in features:
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f < d_sae:
            raise TargetError(f"Feature {f!r} is not a feature id of this SAE (0 .. {d_sae - 1}).")
        out.append(int(f))
    if not out:
        raise TargetError("Give at least one feature id.")
    return out


def _check_d_in(adapter: ModelAdapter, tokens: Tensor, hook: str, W_enc: Tensor) -> None:
    with torch.no_grad():
        act = adapter.run_until(tokens, hook)
    if act.shape[-1] != W_enc.shape[0]:
        raise TargetError(
            f"The SAE expects d_in={W_enc.shape[0]} but {hook!r} gives {act.shape[-1]}. "
            "Check that this SAE was trained on this hook of this model."
        )


def encode(sae: Any, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
    W_enc, _ = sae_weights(sae)
    return sae.encode(x.to(W_enc.dtype))


_SAE_STATE = ("x_norm_coeff", "ln_mu", "ln_std")  # what SAELens' run-time normalisation stores


class _sae_state:
    """Restores the attributes SAELens' stateful input normalisation sets on the SAE object."""

    def __init__(self, sae: Any) -> None:
        self.sae = sae
        self.saved = {k: getattr(sae, k) for k in _SAE_STATE if hasattr(sae, k)}

    def __enter__(self) -> "_sae_state":
        return self

    def __exit__(self, *exc: Any) -> None:
        for k in _SAE_STATE:
            if k in self.saved:
                setattr(self.sae, k, self.saved[k])
            elif hasattr(self.sae, k):
                try:
                    delattr(self.sae, k)
                except AttributeError:
                    pass


def _cfg_get(sae: Any, name: str, default: Any = None) -> Any:
    cfg = getattr(sae, "cfg", None)
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def sae_input(sae: Any, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
    """What the SAE's encoder matrix multiplies: SAELens' ``process_sae_in`` when the SAE has it;
    otherwise the SAELens rules read from ``cfg`` (``normalize_activations``:
    ``constant_norm_rescale`` = x·sqrt(d_in)/|x|, ``layer_norm`` = (x − mean)/(std + 1e-5);
    then ``x − b_dec`` if ``cfg.apply_b_dec_to_input``)."""
    W_enc, _ = sae_weights(sae)
    x = x.to(W_enc.dtype)
    if hasattr(sae, "process_sae_in"):
        return sae.process_sae_in(x)
    norm = _cfg_get(sae, "normalize_activations", None)
    if norm in (None, "none", "expected_average_only_in"):
        pass  # the latter is folded into the weights for inference in SAELens
    elif norm == "constant_norm_rescale":
        x = x * (x.shape[-1] ** 0.5) / x.norm(dim=-1, keepdim=True)
    elif norm == "layer_norm":
        x = x - x.mean(-1, keepdim=True)
        x = x / (x.std(-1, keepdim=True) + 1e-5)
    else:
        raise TargetError(
            f"This SAE normalises its input with {norm!r}, which mechattr cannot reproduce without "
            "process_sae_in(); give the SAE a process_sae_in(x) method (SAELens SAEs have one)."
        )
    if _cfg_get(sae, "apply_b_dec_to_input", False):
        x = x - sae.b_dec.to(x)
    return x


def sae_pre_activation(sae: Any, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
    """Encoder pre-activations exactly as the SAE computes them: SAELens'
    ``encode_with_hidden_pre`` if present, else ``sae_input(x) @ W_enc + b_enc``."""
    W_enc, _ = sae_weights(sae)
    if hasattr(sae, "encode_with_hidden_pre"):
        with _sae_state(sae):
            _, pre = sae.encode_with_hidden_pre(x.to(W_enc.dtype))
        return pre
    with _sae_state(sae):
        sin = sae_input(sae, x)
    b_enc = getattr(sae, "b_enc", None)
    pre = sin @ W_enc
    return pre if b_enc is None else pre + b_enc.to(pre)


def decoder_writes(
    sae: Any, x: Float[Tensor, " d_in"], grads: Float[Tensor, "rows d_in"]
) -> tuple[Float[Tensor, " d_sae"], Float[Tensor, "d_sae rows"]]:
    """(activations, ``∂decode(acts)/∂act_f · grads[r]``) at one position: the decoder's write
    per unit activation in the model's units (SAELens' ``decode`` undoes the input
    normalisation it recorded at ``encode``), contracted with each row's gradient. Without a
    ``decode`` method the write is ``W_dec[f]``."""
    W_enc, W_dec = sae_weights(sae)
    with _sae_state(sae):
        acts = sae.encode(x.to(W_enc.dtype)).detach()
        if not hasattr(sae, "decode"):
            return acts, einsum(W_dec.detach().to(grads.dtype), grads, "f d, r d -> f r")
        a = acts.clone().requires_grad_(True)
        with torch.enable_grad():
            out = sae.decode(a)
            cols = [
                torch.autograd.grad(out, a, grad_outputs=g.to(out.dtype), retain_graph=r < grads.shape[0] - 1)[0]
                for r, g in enumerate(grads)
            ]
    return acts, torch.stack(cols, dim=-1).detach()


# ----- feature as target -------------------------------------------------------------------------
@dataclass
class SAEFeaturePlan(Plan):
    tokens: Tensor
    labels: list[str]
    positions: list[int]
    token_ids: list[int | None]
    sae: Any
    hook: str
    features: list[int]
    description: str = ""

    def evaluate(self, adapter, tokens, embed=None, fwd_hooks=()):
        act = adapter.run_until(tokens, self.hook, embed=embed, fwd_hooks=fwd_hooks)
        feats = encode(self.sae, act[:, self.positions[0]])
        return feats[:, self.features].to(act.dtype)


class SAEFeature(Target):
    """Explain the activation of SAE feature(s) ``feature`` at ``position`` (default: last)."""

    def __init__(
        self, sae: Any, feature: int | Sequence[int], position: int | None = None, hook: str | None = None
    ) -> None:
        W_enc, _ = sae_weights(sae)
        self.sae = sae
        self.hook = sae_hook_name(sae, hook)
        feats = [feature] if isinstance(feature, int) and not isinstance(feature, bool) else list(feature)
        self.features = _check_feature_ids(feats, int(W_enc.shape[1]))
        self.position = position

    def __repr__(self) -> str:
        return f"SAEFeature(features={self.features}, hook={self.hook!r}, position={self.position})"

    def plan(self, adapter, prompt_tokens):
        adapter.check_hook(self.hook)
        W_enc, _ = sae_weights(self.sae)
        _check_d_in(adapter, prompt_tokens, self.hook, W_enc)
        pos = resolve_position(self.position, prompt_tokens.shape[-1])
        return SAEFeaturePlan(
            tokens=prompt_tokens,
            labels=[f"feature {f}" for f in self.features],
            positions=[pos] * len(self.features),
            token_ids=[None] * len(self.features),
            sae=self.sae,
            hook=self.hook,
            features=self.features,
            description=f"SAE feature activation at {self.hook} position {pos}",
        )


# ----- token → feature map -----------------------------------------------------------------------
def _batched_input_grads(
    act: Tensor, x: Tensor, grad_out: Tensor
) -> tuple[Tensor, bool]:
    """vjp of ``act`` w.r.t. ``x`` for a batch of output gradients ``grad_out [k, *act.shape]``,
    in one batched backward; falls back to one backward each if an op has no batching rule."""
    try:
        (g,) = torch.autograd.grad(act, x, grad_outputs=grad_out, is_grads_batched=True, retain_graph=True)
        return g, True
    except (RuntimeError, NotImplementedError):
        gs = [torch.autograd.grad(act, x, grad_outputs=go, retain_graph=True)[0] for go in grad_out]
        return torch.stack(gs), False


def token_feature_map(
    model: Any,
    text: Any,
    sae: Any,
    position: int | None = -1,
    k: int = 10,
    *,
    hook: str | None = None,
    features: Sequence[int] | None = None,
    target: Any = None,
    freeze: bool = False,
    attribute_bos: bool = False,
) -> Attribution:
    """Feature × source-token attributions for the top-``k`` active SAE features at ``position``.

    Returns an :class:`~mechattr.Attribution` with dims ``("feature", "target", "src")`` (one
    target row: the feature pre-activations at ``position``). ``params['features']`` holds the
    feature ids, ``params['feature_acts']`` their activations, ``params['frozen']`` whether
    attention patterns and norm scales were frozen. With ``target`` (anything
    :func:`mechattr.attribute` accepts), ``diagnostics['direct_effects']`` holds each feature's
    direct effect on it (``[feature][target row]``) and ``diagnostics['direct_effect_targets']``
    the row labels."""
    t0 = time.perf_counter()
    adapter = as_adapter(model)
    hook_name = sae_hook_name(sae, hook)
    adapter.check_hook(hook_name)
    W_enc, W_dec = sae_weights(sae)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}.")
    with adapter.guard():
        if isinstance(text, str):
            tokens = adapter.tokenize(text)
            prompt: str | None = text
        else:
            tokens, prompt = adapter.check_length(torch.as_tensor(text).reshape(1, -1).long()), None
        _check_d_in(adapter, tokens, hook_name, W_enc)
        pos = resolve_position(position, tokens.shape[-1])
        x0 = adapter.embed(tokens)
        fz = frozen_hooks(adapter, tokens) if freeze else []
        x = x0.clone().requires_grad_(True)
        with torch.enable_grad():
            act = adapter.run_until(tokens, hook_name, embed=x, fwd_hooks=fz)
            with torch.no_grad(), _sae_state(sae):
                acts_all = encode(sae, act[0, pos]).float()
            if features is None:
                active = torch.nonzero(acts_all > 0).reshape(-1)
                if active.numel() == 0:
                    raise TargetError(
                        f"No feature of this SAE is active at position {pos}; pick another "
                        "position or pass features=[...] explicitly."
                    )
                order = torch.argsort(acts_all[active], descending=True)[:k]
                feats = active[order].tolist()
            else:
                feats = _check_feature_ids(list(features), int(W_enc.shape[1]))
            # the pre-activations from exactly what the SAE was trained on (normalised input,
            # b_dec removed), differentiated through that processing
            pre = sae_pre_activation(sae, act[0, pos])  # [d_sae]
            grad_out = torch.zeros(len(feats), *pre.shape, dtype=pre.dtype, device=pre.device)
            grad_out[torch.arange(len(feats)), feats] = 1.0
            g, batched = _batched_input_grads(pre, x, grad_out)  # k 1 pos d
        scores = einsum(g[:, 0], x0[0], "f p d, p d -> f p")
        if not attribute_bos and adapter.prepend_bos and int(tokens[0, 0]) == adapter.special_token_id("bos"):
            scores[:, 0] = 0.0
        diagnostics: dict[str, Any] = {"batched_backward": batched}
        if target is not None:
            eff, labels = feature_direct_effects(
                adapter, tokens, sae, pos, feats, target, hook=hook_name, freeze=freeze, _frozen=fz
            )
            diagnostics["direct_effects"] = eff.tolist()
            diagnostics["direct_effect_targets"] = labels
    diagnostics["seconds"] = time.perf_counter() - t0
    return Attribution(
        tokens=adapter.str_tokens(tokens),
        token_ids=tokens[0].tolist(),
        targets=[f"SAE pre-activation at {hook_name} pos {pos}"],
        target_positions=[pos],
        scores=scores[:, None].detach().cpu().float(),
        dims=("feature", "target", "src"),
        method="token_feature_map",
        params={
            "features": feats,
            "feature_acts": acts_all[feats].tolist(),
            "hook": hook_name,
            "position": pos,
            "k": k,
            "frozen": bool(freeze),
            "score": "input_x_gradient of the encoder pre-activation",
            "attribute_bos": attribute_bos,
        },
        diagnostics=diagnostics,
        prompt=prompt,
        model_name=adapter.name,
        target_description=f"top-{len(feats)} SAE features at {hook_name} position {pos}",
        target_token_ids=[None],
    )


def feature_direct_effects(
    model: Any,
    tokens: Any,
    sae: Any,
    position: int,
    features: Sequence[int],
    target: Any = None,
    *,
    hook: str | None = None,
    freeze: bool = False,
    _frozen: Sequence[Any] | None = None,
) -> tuple[Float[Tensor, "feature rows"], list[str]]:
    """``act_f · (∂decode/∂act_f · ∂target/∂act[position])`` for each feature, per target row
    (``W_dec[f]`` for the write when the SAE has no ``decode``; SAELens' ``decode`` maps back to
    the model's units).

    With ``freeze=True`` attention patterns and norm scales downstream are held at their clean
    values; MLPs stay nonlinear, so this is the first-order effect through that partly frozen
    model, not a linear direct effect."""
    from ..api import resolve

    adapter = as_adapter(model)
    hook_name = sae_hook_name(sae, hook)
    W_enc, W_dec = sae_weights(sae)
    feats = _check_feature_ids(list(features), int(W_enc.shape[1]))
    if isinstance(tokens, str):
        tokens = adapter.tokenize(tokens)
    adapter_, plan, _ = resolve(adapter, tokens.reshape(-1), target)
    toks = plan.tokens
    pos = resolve_position(position, tokens.shape[-1])
    with adapter.guard():
        fz = list(_frozen) if (freeze and _frozen is not None and toks.shape == tokens.shape) else (
            frozen_hooks(adapter, toks) if freeze else []
        )
        taps = Taps([hook_name])
        with torch.enable_grad():
            vals = evaluate_hooked(adapter, plan, toks, None, fwd_hooks=list(fz) + taps.hooks())
            if hook_name not in taps.delta:
                raise TargetError(f"The target is read before {hook_name!r}; a feature there cannot affect it.")
            g = torch.stack(
                [taps.grads(vals[0, r], retain_graph=r < plan.n_rows - 1)[hook_name][0, pos] for r in range(plan.n_rows)]
            )  # rows d
        act = taps.acts[hook_name][0, pos].detach()
        acts, writes = decoder_writes(sae, act, g.detach())
        eff = acts[feats].float()[:, None] * writes[feats].float()
    return eff, list(plan.labels)


__all__ = [
    "SAEFeature",
    "token_feature_map",
    "feature_direct_effects",
    "sae_hook_name",
    "sae_weights",
    "encode",
    "sae_input",
    "sae_pre_activation",
]
