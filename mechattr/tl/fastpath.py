"""A hook-free forward for TransformerBridge models: the model's own Hugging Face weights run
through a plain Hugging Face module tree.

Why: a TransformerBridge replaces the Hugging Face modules inside ``model.original_model`` with
bridge components that add hook points and, for some architectures, split fused projections
(GPT-2's QKV) into separate hooked ones. A forward+backward through the bridge costs about 1.6x
the same step on the plain Hugging Face model (``benchmarks/profile_ig.py``). Most attribution
work (every gradient method, every perturbation forward) needs no hook except the token-embedding
replacement, which Hugging Face models take natively as ``inputs_embeds``.

How: :meth:`FastPath.build` instantiates the Hugging Face model class on the meta device (no
memory, no weight init) and points every parameter and buffer at the *same* tensor objects as the
bridge's original model (unwrapping bridge components to the Hugging Face modules they wrap). No
weight is copied, so later in-place changes to the weights (randomization checks, fine-tuning) are
seen by both. The user's model is not modified.

When it is used: only through :meth:`mechattr.tl.adapter.ModelAdapter.logits` with no mechattr hooks,
when no hook point carries a hook, no module the bridge runs (its own tree and
``original_model``'s) a hook that is not the libraries' own, and no global module hook is
registered (a user's hook must keep applying; checked at every call), and after a self-check: logits of the fast path equal the bridge's logits, on the real token
embedding and on a perturbed one, for this model (re-done when the model's parameter objects
or hooks change). Anything else (TL 3 ``HookedTransformer``, models whose class cannot be built on the meta
device, a failed self-check) runs through the bridge as before. ``MECHATTR_FAST_PATH=0`` turns it
off.

Attention: the Hugging Face tree is rebuilt with PyTorch's scaled-dot-product attention
(``attn_implementation="sdpa"``, causal, no mask tensor for unpadded inputs) whatever the
bridge's own model was loaded with (mechattr's tiny GPT-2 and many bridges load "eager"). A
hook-free pass then never materialises the ``heads x n x n`` attention patterns, neither in the
forward nor in what autograd keeps for the backward, so its memory grows linearly in the input
length; :meth:`ModelAdapter.attention_bytes_per_token` drops the quadratic term for it.
``MECHATTR_SDPA=0`` keeps the model's own implementation.

Options (:func:`options`, or the environment): ``checkpoint`` (``MECHATTR_CHECKPOINT=1``)
recomputes each block in the backward instead of keeping its activations (for inputs that still
do not fit); ``autocast`` (``MECHATTR_AUTOCAST=bf16|fp16``) runs the passes under
``torch.autocast`` and returns float32 logits; evaluations inside :func:`full_precision` (the
f(x), f(baseline) of a completeness check, ``Context.values`` on embeddings) stay in float32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import os
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor


def enabled() -> bool:
    return os.environ.get("MECHATTR_FAST_PATH", "1").strip().lower() not in {"0", "false", "no", "off"}


def sdpa_enabled() -> bool:
    return os.environ.get("MECHATTR_SDPA", "1").strip().lower() not in {"0", "false", "no", "off"}


_AUTOCAST_NAMES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_OPTIONS: dict[str, Any] = {}


def _env_options() -> dict[str, Any]:
    ck = os.environ.get("MECHATTR_CHECKPOINT", "0").strip().lower() in {"1", "true", "yes", "on"}
    ac = os.environ.get("MECHATTR_AUTOCAST", "").strip().lower()
    return {"checkpoint": ck, "autocast": _AUTOCAST_NAMES.get(ac)}


def current_options() -> dict[str, Any]:
    """The pass options in force: :func:`options` overrides the environment."""
    return {**_env_options(), **_OPTIONS}


@contextlib.contextmanager
def options(*, checkpoint: bool | None = None, autocast: Any = None) -> Iterator[None]:
    """Options for the hook-free passes inside the block: ``checkpoint=True`` (activation
    checkpointing per block), ``autocast=torch.bfloat16`` / ``"bf16"`` / ``torch.float16``."""
    global _OPTIONS
    saved = dict(_OPTIONS)
    if checkpoint is not None:
        _OPTIONS["checkpoint"] = bool(checkpoint)
    if autocast is not None:
        dt = _AUTOCAST_NAMES.get(autocast.lower()) if isinstance(autocast, str) else autocast
        if dt not in (torch.bfloat16, torch.float16, False):
            from ..errors import MethodError

            raise MethodError(f"autocast must be 'bf16', 'fp16', torch.bfloat16 or torch.float16, got {autocast!r}.")
        _OPTIONS["autocast"] = dt or None
    try:
        yield
    finally:
        _OPTIONS = saved


_FULL_PRECISION = [0]


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Passes inside the block ignore the autocast option (completeness evaluations: f(x) and
    f(baseline) are compared against the attributions in float32)."""
    _FULL_PRECISION[0] += 1
    try:
        yield
    finally:
        _FULL_PRECISION[0] -= 1


def _unwrap(m: Any) -> Any:
    """The Hugging Face module a bridge component wraps (the module itself when it wraps none)."""
    seen = 0
    while isinstance(m, torch.nn.Module) and "_original_component" in m._modules and seen < 8:
        inner = m._modules["_original_component"]
        if inner is None or inner is m:
            break
        m = inner
        seen += 1
    return m


def _resolve(root: torch.nn.Module, path: str) -> Any:
    m: Any = root
    for part in path.split(".") if path else []:
        m = _unwrap(m)
        m = getattr(m, part)
    return _unwrap(m)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_LIBRARY = ("transformer_lens.", "transformers.")


def _is_library_hook(fn: Any) -> bool:
    f = getattr(fn, "func", fn)  # functools.partial
    f = getattr(f, "__func__", f)  # bound method
    return str(getattr(f, "__module__", "") or "").startswith(_LIBRARY)


_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _modules(model: torch.nn.Module) -> Any:
    """Every module a bridge forward can run: the bridge's own tree and the Hugging Face model it
    wraps. ``model.original_model`` (and its base model, e.g. ``transformer``) is not a submodule of
    the bridge, yet the bridge calls it, so hooks there apply on the bridge and must be seen."""
    seen: set[int] = set()
    for root in (model, getattr(model, "original_model", None)):
        if not isinstance(root, torch.nn.Module):
            continue
        for m in root.modules():
            if id(m) not in seen:
                seen.add(id(m))
                yield m


def hook_state(model: torch.nn.Module) -> tuple[bool, frozenset]:
    """(blocked, internal): ``blocked`` when a hook point carries any hook (TransformerLens's way
    of adding hooks), any other module the bridge runs carries a hook that is not
    TransformerLens's or Hugging Face's own (a user's ``register_forward_hook``), or a global
    module hook is registered (``torch.nn.modules.module.register_module_forward_hook``);
    ``internal`` identifies the library's own hooks (the bridge wires some into the wrapped
    modules on its first forward)."""
    from torch.nn.modules import module as _torch_module

    if any(getattr(_torch_module, d, None) for d in _GLOBAL_HOOK_DICTS):
        return True, frozenset()
    internal = set()
    for m in _modules(model):
        is_hook_point = type(m).__name__ == "HookPoint"
        for d in _HOOK_DICTS:
            hooks = getattr(m, d, None)
            if not hooks:
                continue
            if is_hook_point:
                return True, frozenset()
            for k, fn in hooks.items():
                if not _is_library_hook(fn):
                    return True, frozenset()
                internal.add((id(m), d, k))
    return False, frozenset(internal)


def outer_hooks(model: Any) -> bool:
    """Whether the Hugging Face model a bridge wraps (``original_model`` or its base model) carries
    a hook that is not the libraries' own. The bridge runs those modules around its blocks, so
    their forward hooks fire only once the whole forward has run: a pass that stops after the
    last block (``ModelAdapter.run_until``) would skip them."""
    om = getattr(model, "original_model", None)
    if not isinstance(om, torch.nn.Module):
        return False
    base = getattr(om, "base_model", None)
    for m in (om, base):
        if not isinstance(m, torch.nn.Module):
            continue
        for d in _HOOK_DICTS:
            for fn in (getattr(m, d, None) or {}).values():
                if not _is_library_hook(fn):
                    return True
    return False


def fingerprint(model: torch.nn.Module, internal_hooks: frozenset) -> tuple:
    """Changes when a parameter or buffer object of the model is replaced or the library's own
    hooks change (in-place weight edits are shared with the fast path and need no rebuild)."""
    return (
        tuple(id(p) for p in model.parameters()),
        tuple(id(b) for b in model.buffers()),
        getattr(model, "compatibility_mode", None),
        internal_hooks,
    )


class FastPath:
    """Plain Hugging Face forward sharing the weights of a TransformerBridge."""

    def __init__(self, hf: torch.nn.Module) -> None:
        self.hf = hf
        self.base = hf.base_model
        self.head = hf.get_output_embeddings()
        self.embedding = hf.get_input_embeddings()
        self.attn_implementation = str(getattr(hf.config, "_attn_implementation", "") or "eager")
        params = inspect.signature(self.base.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.layers = _decoder_layers(self.base)
        for layer in self.layers:  # our own copy of the module tree: the user's modules are untouched
            layer.forward = functools.partial(_maybe_checkpointed, layer.forward)

    @property
    def sdpa(self) -> bool:
        """Whether the passes run scaled-dot-product attention (no n x n patterns kept)."""
        return self.attn_implementation == "sdpa"

    @classmethod
    def build(cls, model: Any) -> "FastPath | None":
        """A fast path sharing ``model``'s weights, or None when the model is not a bridge over a
        Hugging Face model or its class cannot be rebuilt around those weights."""
        om = getattr(model, "original_model", None)
        try:
            from transformers import PreTrainedModel
        except ImportError:  # pragma: no cover - TL always installs transformers
            return None
        if not isinstance(om, PreTrainedModel):
            return None
        # Multi-device placements (device_map / accelerate's dispatch hooks, which patch forward
        # methods rather than registering torch hooks) stay on the bridge.
        if getattr(om, "hf_device_map", None) or any(hasattr(m, "_hf_hook") for m in om.modules()):
            return None
        if len({t.device for t in om.parameters()}) > 1:
            return None
        try:
            with torch.device("meta"):
                hf = type(om)(copy.deepcopy(om.config))
        except Exception:
            return None
        try:
            for name, mod in hf.named_modules(remove_duplicate=False):
                src = _resolve(om, name)
                if not isinstance(src, torch.nn.Module):
                    return None
                for pname in list(mod._parameters):
                    if mod._parameters[pname] is None:
                        continue
                    p = getattr(src, pname, None)
                    if not isinstance(p, torch.nn.Parameter):
                        return None
                    mod._parameters[pname] = p
                for bname in list(mod._buffers):
                    if mod._buffers[bname] is None:
                        continue
                    b = getattr(src, bname, None)
                    if not isinstance(b, Tensor):
                        return None
                    mod._buffers[bname] = b
                # Rotary embeddings etc. keep tensors as plain attributes on some versions.
        except (AttributeError, TypeError):
            return None
        if any(t.is_meta for t in list(hf.parameters()) + list(hf.buffers())):
            return None
        hf.eval()
        if sdpa_enabled():
            try:
                hf.set_attn_implementation("sdpa")
            except Exception:  # a class without SDPA support keeps its own attention
                pass
        try:
            fp = cls(hf)
        except Exception:
            return None
        return fp

    def logits(
        self,
        tokens: Tensor,
        embed: Tensor | None = None,
        positions: Sequence[int] | None = None,
    ) -> Tensor:
        with self.autocast():
            if embed is None:
                out = self.base(input_ids=tokens, use_cache=False, return_dict=True)
            else:
                out = self.base(inputs_embeds=embed, use_cache=False, return_dict=True)
            h = out.last_hidden_state
            if positions is not None:
                h = h[:, list(positions)]
            logits = self.head(h)
        return self._out(logits, tokens if embed is None else embed)

    def autocast(self) -> Any:
        dt = current_options().get("autocast")
        if dt is None or _FULL_PRECISION[0]:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.head.weight.device.type, dtype=dt)

    def _out(self, logits: Tensor, like: Tensor) -> Tensor:
        """Autocast logits come back in float32 (targets take log-softmax of them)."""
        if logits.dtype != torch.float32 and current_options().get("autocast") is not None:
            return logits.float()
        return logits


def _decoder_layers(base: torch.nn.Module) -> list[torch.nn.Module]:
    """The per-block modules of a Hugging Face decoder (GPT-2 ``h``, Llama-style ``layers``)."""
    for name in ("h", "layers", "blocks", "layer"):
        ml = getattr(base, name, None)
        if isinstance(ml, torch.nn.ModuleList) and len(ml):
            return list(ml)
    return []


def _maybe_checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    """A block's forward, recomputed in the backward (torch.utils.checkpoint) when the
    ``checkpoint`` option is on and a gradient is being taken; plain otherwise."""
    if current_options().get("checkpoint") and torch.is_grad_enabled():
        from torch.utils.checkpoint import checkpoint

        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def self_check(fp: FastPath, adapter: Any) -> bool:
    """Whether ``fp`` reproduces the bridge's logits for ``adapter``'s model, on the real token
    embedding and on a perturbed one (so that the meaning of the embedding hook is checked too)."""
    return self_check_failure(fp, adapter) is None


def self_check_failure(fp: FastPath, adapter: Any) -> str | None:
    """None when ``fp`` passes :func:`self_check`, else why not (for the warning the adapter gives)."""
    try:
        return _self_check(fp, adapter)
    except Exception as e:  # any failure of the plain forward means: use the bridge
        return f"the plain forward raised {type(e).__name__}: {e}"


def _self_check(fp: FastPath, adapter: Any) -> str | None:
    toks = adapter.tokenize("The quick brown fox jumps")
    with torch.no_grad():
        ref = adapter.logits(toks, _fast=False)
        mine = fp.logits(toks)
        if ref.shape != mine.shape:
            return f"logits of shape {tuple(mine.shape)} instead of {tuple(ref.shape)}"
        why = _differ(ref, mine)
        if why:
            return why + " on the prompt's own embedding"
        emb = adapter.embed(toks)
        g = torch.Generator(device="cpu").manual_seed(0)
        noise = torch.randn(emb.shape, generator=g).to(emb) * emb.float().std().to(emb.dtype)
        pert = 0.5 * emb + noise
        ref = adapter.logits(toks, embed=pert, positions=[toks.shape[1] - 1], _fast=False)
        mine = fp.logits(toks, embed=pert, positions=[toks.shape[1] - 1])
        if ref.shape != mine.shape:
            return f"logits of shape {tuple(mine.shape)} instead of {tuple(ref.shape)} on a replaced embedding"
        why = _differ(ref, mine)
        return why + " on a replaced embedding" if why else None


def _differ(a: Tensor, b: Tensor) -> str | None:
    """None when ``b`` reproduces ``a``, else how far off it is."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return "non-finite logits"
    scale = max(1.0, float(a.abs().max()))
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 2e-2
    err = float((a.float() - b.float()).abs().max())
    return None if err <= tol * scale else f"logits differ by up to {err:.3g} (tolerance {tol * scale:.3g})"


def _close(a: Tensor, b: Tensor) -> bool:
    return _differ(a, b) is None
