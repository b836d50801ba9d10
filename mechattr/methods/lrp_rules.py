"""Modified backward passes (AttnLRP, CP-LRP, GIM) expressed as TransformerLens hooks.

Each rule replaces an activation ``y`` at a hook point by ``y.detach() + (s - s.detach())``: the
forward value is exactly ``y`` and the gradient is that of the surrogate ``s``, which encodes the
rule. Nothing in the model is patched; the hooks live for one forward (``adapter.hooks`` removes
them also when the call raises). Relevance is then input x (modified) gradient.

Rules (input x gradient form):

* norm (LayerNorm, RMSNorm): the scale (``ln*.hook_scale``) is held constant (identity rule of
  AttnLRP, Achtibat et al. 2024; "norm freezing" of GIM, Edin et al. 2025; LN-rule of Ali et al.
  2022).
* elementwise activation ``f`` (GELU, SiLU, ReLU): identity rule, backward multiplies by
  ``f(x)/x`` (``mlp.hook_pre`` -> ``mlp.hook_post``).
* gated MLP product ``f(g) * u`` (``hook_post = act(hook_pre) * hook_pre_linear``): uniform
  rule, each factor receives half the relevance.
* attention ``softmax(q k^T) v``: uniform rule on both products, folded into gradient scales at
  ``hook_q``/``hook_k`` (1/4: half from ``A v``, half from ``q k^T``) and ``hook_v`` (1/2), as
  AttnLRP's efficient implementation does; the softmax itself passes its plain gradient (the
  AttnLRP softmax rule in input x gradient form).
* CP-LRP: the attention pattern is a constant (``hook_pattern`` detached), so q and k receive
  nothing and v the whole gradient (the head is linear in v). Its gated-MLP product uses the
  uniform rule by default; ``gate="constant"`` holds the gate ``f(g)`` constant instead, so the
  linear branch ``u`` takes all of it (the signal-take-all rule of LRP for gated units, Arras et
  al. 2017), which is what LXT's CP-LRP map does for Llama-style MLPs.
* GIM: norm freezing, softmax backward computed at temperature T (``sT (g - <g, sT>)`` with
  ``sT = softmax(scores / T)``; defaults T = 2) and q/k/v gradient scales 1/4, 1/4, 1/2; no
  activation or product rule.

Components the rules do not cover (an unknown activation, a norm without a scale hook, tanh
soft-capping, attention whose scores do not reproduce its pattern) raise :class:`MethodError`
naming the component: never a silent plain gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tl import hooks as hk
from ..errors import MethodError
from ..tl.adapter import ModelAdapter

RULES = ("attnlrp", "cp_lrp", "gim", "plain")

# Activations the identity rule covers: the recomputation is used only to check that
# ``hook_post`` really is ``act(hook_pre)`` (non-gated) and to split the gated product.
_ACTS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}
_NORMS = (None, "LN", "LNPre", "RMS", "RMSPre")


@dataclass(frozen=True)
class RuleSet:
    """Which modifications one rule family makes (see the module docstring)."""

    name: str
    freeze_norm: bool = True
    act_identity: bool = False
    gated_uniform: bool = False
    gate_constant: bool = False  # gated MLP: the gate is a constant, the signal takes all
    pattern: str = "grad"  # "grad" | "detach" | "temperature"
    temperature: float = 1.0
    q_scale: float = 1.0
    k_scale: float = 1.0
    v_scale: float = 1.0

    @property
    def touches_attention(self) -> bool:
        return self.pattern != "grad" or (self.q_scale, self.k_scale, self.v_scale) != (1.0, 1.0, 1.0)


def rule_set(name: str, **overrides: Any) -> RuleSet:
    """The rules of ``name`` (``attnlrp``, ``cp_lrp``, ``gim`` or ``plain``), with overrides."""
    key = str(name).strip().lower().replace("-", "_") if isinstance(name, str) else name
    if key == "attnlrp":
        rs = RuleSet("attnlrp", act_identity=True, gated_uniform=True, q_scale=0.25, k_scale=0.25, v_scale=0.5)
    elif key in ("cp_lrp", "cplrp"):
        rs = RuleSet("cp_lrp", act_identity=True, gated_uniform=True, pattern="detach")
    elif key == "gim":
        rs = RuleSet("gim", pattern="temperature", temperature=2.0, q_scale=0.25, k_scale=0.25, v_scale=0.5)
    elif key == "plain":
        rs = RuleSet("plain", freeze_norm=False)
    else:
        raise MethodError(f"Unknown gradient rule {name!r}; choose one of {list(RULES)}.")
    for k, v in overrides.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise MethodError(f"{k} must be a finite number, got {v!r}.")
        if k == "temperature" and v <= 0:
            raise MethodError(f"temperature must be > 0, got {v!r}.")
    clean = {k: float(v) for k, v in overrides.items() if v is not None}
    if "temperature" in clean and rs.pattern != "temperature":
        raise MethodError(f"temperature applies to rule 'gim' only, not {rs.name!r}.")
    rs = replace(rs, **clean)
    if rs.pattern == "temperature" and rs.temperature == 1.0:
        rs = replace(rs, pattern="grad")  # T = 1 is the plain softmax gradient
    return rs


def _with_grad_of(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` in the forward, the gradient of ``surrogate`` in the backward (exactly: the
    added term is ``s - s`` = 0)."""
    return value.detach() + (surrogate - surrogate.detach())


def _scale_grad(x: Tensor, s: float) -> Tensor:
    return x if s == 1.0 else x.detach() + s * (x - x.detach())


def _tol(dtype: torch.dtype) -> float:
    """Tolerance of the forward self-checks: 1e-3, or a few ulps for half precision."""
    return max(1e-3, 16 * float(torch.finfo(dtype).eps)) if dtype.is_floating_point else 1e-3


def _cfg(adapter: ModelAdapter, name: str, default: Any = None) -> Any:
    return getattr(adapter.cfg, name, default)


def check_architecture(adapter: ModelAdapter, rules: RuleSet) -> None:
    """Raise a MethodError naming any component the rules do not cover."""
    if rules.name == "plain":
        return
    norm = _cfg(adapter, "normalization_type")
    if rules.freeze_norm and norm not in _NORMS:
        raise MethodError(
            f"The {rules.name} rules cover LayerNorm and RMSNorm; this model's normalization "
            f"(cfg.normalization_type={norm!r}) is not covered, so the relevance would not follow "
            "the rules. Use a gradient method (input_x_gradient, integrated_gradients) instead."
        )
    act = _cfg(adapter, "act_fn")
    if rules.act_identity and not _cfg(adapter, "attn_only", False):
        if act not in _ACTS:
            raise MethodError(
                f"The {rules.name} rules cover the MLP activations {sorted(_ACTS)}; this model's "
                f"MLP activation (cfg.act_fn={act!r}, blocks.*.mlp) is not covered."
            )
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        v = _cfg(adapter, cap, -1.0)
        if v is not None and float(v) > 0:
            raise MethodError(
                f"This model applies tanh soft-capping ({cap}={v}), an elementwise non-linearity "
                f"the {rules.name} rules do not cover."
            )


class RuleHooks:
    """The forward hooks of one rule set for one model; :meth:`hooks` gives fresh hooks for one
    forward (state is per forward), :meth:`check` raises if a hook a rule needs never fired."""

    def __init__(self, adapter: ModelAdapter, rules: RuleSet) -> None:
        check_architecture(adapter, rules)
        self.adapter = adapter
        self.rules = rules
        self.fired: set[str] = set()
        self._store: dict[tuple[int, str], Tensor] = {}
        self._has_linear: bool | None = None  # whether mlp.hook_pre_linear exists (gated MLPs)

    # --- required hooks ---------------------------------------------------------------------
    def required(self) -> list[str]:
        r, a = self.rules, self.adapter
        L = a.n_layers
        out: list[str] = []
        if r.name == "plain":
            return out
        if r.freeze_norm and _cfg(a, "normalization_type") is not None:
            for l in range(L):
                out.append(hk.ln_scale(l, 1))
                if not _cfg(a, "attn_only", False) and not _cfg(a, "parallel_attn_mlp", False):
                    out.append(hk.ln_scale(l, 2))
            out.append(hk.LN_FINAL_SCALE)
        if r.act_identity and not _cfg(a, "attn_only", False):
            out += [hk.mlp_hook(l, k) for l in range(L) for k in ("pre", "post")]
        for l in range(L):
            if r.q_scale != 1.0:
                out.append(hk.attn_hook(l, "q"))
            if r.k_scale != 1.0:
                out.append(hk.attn_hook(l, "k"))
            if r.v_scale != 1.0:
                out.append(hk.attn_hook(l, "v"))
            if r.pattern != "grad":
                out.append(hk.attn_hook(l, "pattern"))
            if r.pattern == "temperature":
                out.append(hk.attn_hook(l, "attn_scores"))
        return out

    def hooks(self) -> list[tuple[str, Callable]]:
        """Fresh hooks for one forward pass."""
        self.fired = set()
        self._store = {}
        r, a = self.rules, self.adapter
        if r.name == "plain":
            return []
        hooks: list[tuple[str, Callable]] = []
        L = a.n_layers
        if r.freeze_norm:
            names = [n for n in self.required() if n.endswith("hook_scale")]
            # Extra norms some architectures have (e.g. post-attention norms) are frozen too.
            names += [n for n in a.hook_names() if n.endswith("hook_scale") and n not in names]
            hooks += [(n, self._freeze(n)) for n in names]
        for l in range(L):
            if r.act_identity and not _cfg(a, "attn_only", False):
                hooks += [
                    (hk.mlp_hook(l, "pre"), self._keep(l, "pre")),
                    (hk.mlp_hook(l, "post"), self._mlp_post(l)),
                ]
                if self._has_linear is None:
                    self._has_linear = bool(_cfg(a, "gated_mlp", False)) or a.has_hook(hk.mlp_hook(0, "pre_linear"))
                if self._has_linear:
                    hooks.append((hk.mlp_hook(l, "pre_linear"), self._keep(l, "pre_linear")))
            for kind, s in (("q", r.q_scale), ("k", r.k_scale), ("v", r.v_scale)):
                if s != 1.0:
                    hooks.append((hk.attn_hook(l, kind), self._scale(hk.attn_hook(l, kind), s)))
            if r.pattern == "temperature":
                hooks.append((hk.attn_hook(l, "attn_scores"), self._keep(l, "scores")))
            if r.pattern != "grad":
                hooks.append((hk.attn_hook(l, "pattern"), self._pattern(l)))
        return hooks

    def check(self, until: str | None = None) -> None:
        """After a forward: every hook a rule needs must have fired (else the rule silently did
        not apply). ``until``: the hook where the target is read (a probe or SAE feature at an
        inner layer), so the forward stopped there; only the layers before it are checked."""
        req = self.required()
        if until:
            parts = until.split(".")
            if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
                stop = int(parts[1])
                req = [n for n in req if n.startswith("blocks.") and int(n.split(".")[1]) < stop]
            else:
                req = [n for n in req if n.startswith("blocks.")]
        missing = [n for n in req if n not in self.fired]
        if missing:
            raise MethodError(
                f"The {self.rules.name} rules need the hook {missing[0]!r}"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, which never fired "
                "on this model, so that component would get a plain gradient. This architecture "
                "(or this TransformerBridge without compatibility mode) is not covered; use a "
                "gradient method instead."
            )

    # --- hook makers -----------------------------------------------------------------------
    def _freeze(self, name: str) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            self.fired.add(name)
            return x.detach()

        return fn

    def _keep(self, layer: int, what: str) -> Callable:
        name = {"pre": hk.mlp_hook(layer, "pre"), "pre_linear": hk.mlp_hook(layer, "pre_linear"),
                "scores": hk.attn_hook(layer, "attn_scores")}[what]

        def fn(x: Tensor, hook: Any) -> Tensor:
            self.fired.add(name)
            self._store[(layer, what)] = x
            return x

        return fn

    def _scale(self, name: str, s: float) -> Callable:
        def fn(x: Tensor, hook: Any) -> Tensor:
            self.fired.add(name)
            return _scale_grad(x, s)

        return fn

    def _mlp_post(self, layer: int) -> Callable:
        name = hk.mlp_hook(layer, "post")
        act_name = _cfg(self.adapter, "act_fn")

        def fn(post: Tensor, hook: Any) -> Tensor:
            self.fired.add(name)
            pre = self._store.get((layer, "pre"))
            if pre is None:
                return post  # check() reports the missing hook_pre
            act = _ACTS.get(act_name)
            if act is None:
                raise MethodError(f"blocks.{layer}.mlp: activation {act_name!r} is not covered by the rules.")
            a = act(pre)
            up = self._store.get((layer, "pre_linear"))
            expect = a if up is None else a * up
            scale = float(post.detach().abs().max().clamp_min(1.0)) * _tol(post.dtype)
            if expect.shape != post.shape or float((expect.detach() - post.detach()).abs().max()) > scale:
                raise MethodError(
                    f"blocks.{layer}.mlp: hook_post is not {act_name}(hook_pre)"
                    f"{' * hook_pre_linear' if up is not None else ''} on this model, so the identity "
                    "rule cannot be applied; this MLP is not covered by the rules."
                )
            # identity rule: d a / d pre := a / pre (limit f'(0) = 1/2 for GELU/SiLU at pre = 0)
            p = pre.detach()
            ratio = torch.where(p == 0, torch.full_like(p, 0.5), a.detach() / torch.where(p == 0, torch.ones_like(p), p))
            a_id = pre * ratio
            if up is None:
                return _with_grad_of(post, a_id)
            if self.rules.gate_constant:
                s = a_id.detach() * up
            elif self.rules.gated_uniform:
                s = 0.5 * (a_id * up.detach() + a_id.detach() * up)
            else:
                s = a_id * up
            return _with_grad_of(post, s)

        return fn

    def _pattern(self, layer: int) -> Callable:
        name = hk.attn_hook(layer, "pattern")
        r = self.rules

        def fn(A: Tensor, hook: Any) -> Tensor:
            self.fired.add(name)
            if r.pattern == "detach":
                return A.detach()
            S = self._store.get((layer, "scores"))
            if S is None:
                return A  # check() reports the missing hook_attn_scores
            q, k = S.shape[-2], S.shape[-1]
            causal = torch.ones(q, k, dtype=torch.bool, device=S.device).tril(k - q)
            Sm = S.masked_fill(~causal, float("-inf"))
            sT = torch.softmax(Sm / r.temperature, dim=-1)
            with torch.no_grad():
                err = float((torch.softmax(Sm, dim=-1) - A).abs().max())
            if not err < _tol(A.dtype):
                raise MethodError(
                    f"blocks.{layer}.attn: softmax(hook_attn_scores) does not reproduce hook_pattern "
                    f"(max difference {err:.2g}), so the softmax temperature rule cannot be applied "
                    "to this attention."
                )
            # d(T softmax(S / T))/dS applied to g is sT (g - <g, sT>): GIM's temperature gradient.
            return _with_grad_of(A, r.temperature * sT)

        return fn


__all__ = ["RULES", "RuleSet", "rule_set", "RuleHooks", "check_architecture"]
