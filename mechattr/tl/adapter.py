"""The only module that knows which TransformerLens line and model class it is talking to.

Supported: TL 3.x ``HookedTransformer``, TL 3.x and 4.x ``TransformerBridge``. Everything else in
mechattr goes through :class:`ModelAdapter`: tokenization and the BOS policy, hook names, layer and
head counts, the embedding hook, a forward that stops after the last block, and a hooks context
that always removes what it added.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..errors import FastPathWarning, HookError, InputError, ModelError, TargetError, UnknownTokenWarning, suggest
from . import hooks as hooknames

EMBED_HOOK = hooknames.EMBED


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once everything needed has been captured."""


def tl_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformer-lens")
    except Exception:  # pragma: no cover - only when installed oddly
        return "unknown"


def tl_major() -> int:
    try:
        return int(tl_version().split(".")[0])
    except ValueError:  # pragma: no cover
        return 0


def model_kind(model: Any) -> str:
    """'hooked' for HookedTransformer, 'bridge' for TransformerBridge; raises otherwise."""
    names = {c.__name__ for c in type(model).__mro__}
    if "TransformerBridge" in names:
        return "bridge"
    if "HookedTransformer" in names:
        return "hooked"
    raise ModelError(
        f"mechattr works on TransformerLens models; got {type(model).__name__}. "
        "Pass a HookedTransformer or TransformerBridge, a local Hugging Face directory, "
        "or a name understood by mechattr.load_model."
    )


@dataclass
class ModelState:
    """What a call must give back unchanged: train/eval mode per module and requires_grad flags."""

    training: list[tuple[torch.nn.Module, bool]]
    requires_grad: list[tuple[torch.nn.Parameter, bool]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> "ModelState":
        return cls(
            training=[(m, m.training) for m in model.modules()],
            requires_grad=[(p, p.requires_grad) for p in model.parameters()],
        )

    def set_eval(self) -> None:
        """``model.eval()`` over the captured modules (one flat loop instead of a recursion)."""
        for m, _ in self.training:
            m.training = False

    def restore(self) -> None:
        for m, t in self.training:
            m.training = t
        for p, r in self.requires_grad:
            if p.requires_grad != r:
                p.requires_grad_(r)


@dataclass
class ModelAdapter:
    """A TransformerLens model seen through one interface. Build with :func:`as_adapter`."""

    model: Any
    name: str = ""
    prepend_bos: bool | None = None
    kind: str = field(init=False)
    _fast_logits_ok: bool | None = field(default=None, init=False, repr=False)
    _guard_depth: int = field(default=0, init=False, repr=False)
    _fast: Any = field(default=None, init=False, repr=False)
    _fast_key: Any = field(default=None, init=False, repr=False)
    _fast_in_guard: Any = field(default=False, init=False, repr=False)  # False: not yet checked
    _hooks_active: int = field(default=0, init=False, repr=False)
    _prefix: Any = field(default=None, init=False, repr=False)  # an active mechattr.tl.prefix runner

    def __post_init__(self) -> None:
        self.kind = model_kind(self.model)
        if self.tokenizer is None:
            raise ModelError(
                "This model has no tokenizer; mechattr needs one to turn text into tokens. "
                "Attach one (model.set_tokenizer(...)) or load the model with a tokenizer."
            )
        if self.prepend_bos is None:
            self.prepend_bos = bool(getattr(self.cfg, "default_prepend_bos", True)) and (
                self.tokenizer.bos_token_id is not None
            )
        if not self.name:
            self.name = str(getattr(self.cfg, "model_name", "") or type(self.model).__name__)

    # ----- config ------------------------------------------------------------------------------
    @property
    def cfg(self) -> Any:
        return self.model.cfg

    @property
    def tokenizer(self) -> Any:
        return getattr(self.model, "tokenizer", None)

    @property
    def n_layers(self) -> int:
        return int(self.cfg.n_layers)

    @property
    def n_heads(self) -> int:
        return int(self.cfg.n_heads)

    @property
    def n_kv_heads(self) -> int:
        kv = getattr(self.cfg, "n_key_value_heads", None)
        return int(kv) if kv else self.n_heads

    @property
    def d_model(self) -> int:
        return int(self.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.cfg.d_vocab)

    @property
    def n_ctx(self) -> int:
        return int(self.cfg.n_ctx)

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return self.model.W_E.dtype

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        return self.model.W_E

    # ----- weights -----------------------------------------------------------------------------
    def W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        """The attention output weights of one layer, per query head (both TL lines expose
        ``blocks[layer].attn.W_O`` in this layout, grouped-query models included)."""
        return self.model.blocks[layer].attn.W_O

    def W_O_stack(self, layers: Sequence[int]) -> Float[Tensor, "layer head d_head d_model"]:
        """:meth:`W_O` of ``layers``, stacked."""
        return torch.stack([self.W_O(layer) for layer in layers])

    # ----- hook names (spelled once, in :mod:`mechattr.tl.hooks`) -------------------------------
    hook_embed = hooknames.EMBED
    hook_ln_final_scale = hooknames.LN_FINAL_SCALE
    resid_pre = staticmethod(hooknames.resid_pre)
    resid_post = staticmethod(hooknames.resid_post)
    mlp_out = staticmethod(hooknames.mlp_out)
    attn_pattern = staticmethod(hooknames.attn_pattern)
    attn_v = staticmethod(hooknames.attn_v)
    attn_z = staticmethod(hooknames.attn_z)

    # ----- tokens ------------------------------------------------------------------------------
    def tokenize(self, text: str) -> Int[Tensor, "1 pos"]:
        """Token ids of ``text`` with the model's BOS policy applied; errors on empty or too long text."""
        if not isinstance(text, str):
            raise InputError(f"Expected the prompt as a string, got {type(text).__name__}.")
        if text == "":
            raise InputError("The prompt is empty: give at least one character of text to attribute.")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        unknown = self.unknown_words(text, ids)
        if unknown:
            warnings.warn(
                f"{len(unknown)} word(s) of the prompt are not in the model's vocabulary and are read as "
                f"its unknown token: {', '.join(repr(w) for w in unknown[:8])}. Attributions to them are "
                "attributions to that one token; use words the model knows (for a zoo model, its task's "
                "words: mechattr.zoo.tasks.get_task(name).words).",
                UnknownTokenWarning, stacklevel=3,
            )
        if self.prepend_bos:
            ids = [int(self.tokenizer.bos_token_id)] + ids
        if not ids:
            raise InputError(f"The prompt {text!r} produced no tokens.")
        return self.check_length(torch.tensor([ids], dtype=torch.long, device=self.device))

    def unknown_words(self, text: str, ids: Sequence[int] | None = None) -> list[str]:
        """The pieces of ``text`` the tokenizer maps to its unknown token (not counting the unknown
        token written out literally). Empty for byte-level tokenizers, which have no unknown words."""
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if unk is None:
            return []
        if ids is None:
            ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if unk not in ids:
            return []
        unk_str = getattr(self.tokenizer, "unk_token", None)
        try:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            pieces = [text[a:b].strip() for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
        except (NotImplementedError, KeyError, TypeError, ValueError):  # slow tokenizers have no offsets
            pieces = ["?"] * sum(1 for i in ids if i == unk)
        return [p for p in pieces if p != unk_str]

    def check_length(self, tokens: Tensor) -> Tensor:
        if tokens.shape[-1] > self.n_ctx:
            raise InputError(
                f"The input has {tokens.shape[-1]} tokens but the model's context is {self.n_ctx}. "
                "Shorten the text (or the forced continuation)."
            )
        if tokens.numel():
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.d_vocab:
                bad = hi if hi >= self.d_vocab else lo
                raise InputError(
                    f"Token ids must lie in [0, {self.d_vocab}): id {bad} is outside the model's vocabulary; the tokenizer "
                    "(or the ids given) does not match the model. Load the tokenizer saved with the model, "
                    "or pass ids below its vocabulary size (a prepended BOS id counts too)."
                )
        return tokens

    def encode_continuation(self, text: str) -> list[int]:
        if not isinstance(text, str) or text == "":
            raise TargetError("A target text must be a non-empty string, e.g. ' Paris'.")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def single_token(self, text: str | int, what: str = "target") -> int:
        """The id of a text that must be exactly one token (or an id passed through after a range check)."""
        if isinstance(text, bool):
            raise TargetError(f"The {what} must be a token string or id, not a bool.")
        if isinstance(text, int):
            if not 0 <= text < self.d_vocab:
                raise TargetError(f"The {what} token id {text} is outside the vocabulary [0, {self.d_vocab}).")
            return int(text)
        ids = self.encode_continuation(text)
        if len(ids) != 1:
            pieces = [self.tokenizer.decode([i]) for i in ids]
            raise TargetError(
                f"The {what} {text!r} is {len(ids)} tokens {pieces}, but one token is required here. "
                "Pass a single token (mind the leading space, e.g. ' Paris'), or use "
                "mechattr.ForcedContinuation(text) to attribute every token of a longer continuation."
            )
        return ids[0]

    def str_tokens(self, ids: Sequence[int] | Tensor) -> list[str]:
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        return [self.tokenizer.decode([int(i)]) for i in ids]

    def special_token_id(self, kind: str) -> int | None:
        """pad/eos/bos/unk/mask id of the tokenizer, or None if it has none."""
        return getattr(self.tokenizer, f"{kind}_token_id", None)

    # ----- hooks -------------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        return list(self.model.hook_dict.keys())

    def has_hook(self, name: str) -> bool:
        if name in self.model.hook_dict:
            return True
        # Bridges resolve legacy aliases (hook_embed, blocks.0.hook_resid_pre) when hooks are added.
        # Some TL 3.x bridges ignore unknown names silently, so count what actually got attached.
        def n_hooks() -> int:
            return sum(len(getattr(hp, "_forward_hooks", {})) for hp in self.model.hook_dict.values())

        before = n_hooks()
        try:
            with self.model.hooks(fwd_hooks=[(name, lambda x, hook: None)]):
                return n_hooks() > before
        except KeyError:  # TransformerLens's answer for a name it does not have
            return False
        except Exception as e:  # the name exists or may: say why it cannot be hooked
            raise HookError(
                f"The model could not attach a hook at {name!r}: {type(e).__name__}: {e} "
                "(a hook point switched off in the config needs its model.set_use_*(True) setter; "
                "a backend that cannot fire it needs a model loaded with boot_transformers)."
            ) from e

    def check_hook(self, name: str) -> str:
        if not isinstance(name, str) or not self.has_hook(name):
            raise HookError(
                f"The model has no hook named {name!r}.{suggest(str(name), self.hook_names())} "
                "List the hook names with mechattr.as_adapter(model).hook_names()."
            )
        return name

    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
        bwd_hooks: Sequence[tuple[str | Callable, Callable]] = (),
    ) -> Iterator[Any]:
        """Add hooks for the duration of a block; they are removed also when the block raises."""
        self._hooks_active += 1
        edits_norm = any(isinstance(n, str) and n.endswith(("hook_scale", "hook_normalized")) for n, _ in fwd_hooks)
        try:
            with self.model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)), warnings.catch_warnings():
                if edits_norm:
                    # TL 4's bridge warns that a hook edited a norm's scale (so it recomputes the norm
                    # from the hooked values); holding the scale fixed is what these hooks are for.
                    warnings.filterwarnings("ignore", message="A forward hook edited hook_scale")
                yield self.model
        except KeyError as e:  # unknown hook name
            missing = str(e.args[0]) if e.args else ""
            raise HookError(
                f"The model has no hook {missing!r}.{suggest(missing, self.hook_names())}"
            ) from e
        finally:
            self._hooks_active -= 1

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Run in eval mode and give the model back exactly as it came (mode, grad flags, no hooks).

        Re-entrant: a guard inside a guard on the same adapter re-asserts eval mode only (the
        outermost one captures and restores), so nested library calls do not pay for a second
        walk over every module."""
        if self._guard_depth:
            self._guard_depth += 1
            try:
                if self.model.training:  # something inside switched it back on
                    self.model.eval()
                yield
            finally:
                self._guard_depth -= 1
            return
        state = ModelState.of(self.model)
        self._guard_depth = 1
        try:
            state.set_eval()
            yield
        finally:
            self._guard_depth = 0
            self._fast_in_guard = False
            state.restore()

    @contextlib.contextmanager
    def frozen_weights(self) -> Iterator[None]:
        """No parameter requires grad inside the block (restored after, also on failure).

        For passes that differentiate with respect to inputs only: a backward that never has to
        consider weight gradients is about 7% faster (forced continuation with 10 target rows on
        the benchmarks model). Not used where a tool builds its graph from the weights
        (TransformerLens's own attribution patching)."""
        thawed = [p for p in self.model.parameters() if p.requires_grad]
        try:
            for p in thawed:
                p.requires_grad_(False)
            yield
        finally:
            for p in thawed:
                p.requires_grad_(True)

    # ----- forward passes ----------------------------------------------------------------------
    def run_until(
        self,
        tokens: Int[Tensor, "batch pos"],
        capture: str,
        embed: Float[Tensor, "batch pos d_model"] | None = None,
        fwd_hooks: Sequence[tuple[str, Callable]] = (),
    ) -> Tensor:
        """Forward ``tokens`` (with the token embedding replaced by ``embed``) and return the
        activation at hook ``capture``; the pass stops there."""
        box: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: Any) -> None:
            box["x"] = x
            raise _StopForward

        hooks = list(fwd_hooks)
        if embed is not None:
            hooks.insert(0, (EMBED_HOOK, lambda x, hook: embed))
        hooks.append((capture, grab))
        with self.hooks(fwd_hooks=hooks):
            try:
                self.model(tokens)
            except _StopForward:
                pass
        if "x" not in box:
            raise HookError(f"The hook {capture!r} did not fire during the forward pass.")
        return box["x"]

    @property
    def final_resid_hook(self) -> str:
        return hooknames.resid_post(self.n_layers - 1)

    def embed(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """What the embedding hook emits for ``tokens`` (token embedding only, no positions)."""
        with torch.no_grad():
            return self.run_until(tokens, EMBED_HOOK).detach().clone()

    def logits_from_resid(
        self, resid: Float[Tensor, "batch k d_model"]
    ) -> Float[Tensor, "batch k vocab"]:
        ln = getattr(self.model, "ln_final", None)
        x = ln(resid) if ln is not None else resid
        return self.model.unembed(x)

    def fast_logits_ok(self) -> bool:
        """Whether ln_final + unembed on the last block's output reproduces the model's logits.

        Checked once per adapter; when it does not hold (an architecture with extra final
        processing, e.g. logit soft-capping) mechattr falls back to full forward passes."""
        if self._fast_logits_ok is None:
            toks = self.tokenize("a b")
            with torch.no_grad(), self.guard():
                full = self.model(toks)
                resid = self.run_until(toks, self.final_resid_hook)
                mine = self.logits_from_resid(resid)
            self._fast_logits_ok = bool(
                full.shape == mine.shape and torch.allclose(full, mine, atol=1e-4, rtol=1e-4)
            )
        return self._fast_logits_ok

    def fast_path(self) -> Any:
        """The hook-free Hugging Face forward sharing this bridge's weights
        (:mod:`mechattr.tl.fastpath`), or None where it does not apply or failed its self-check.

        Not used while a hook point or a module carries a hook that is not the libraries' own, so
        hooks a user added keep applying; rebuilt and re-checked when the model's parameter
        objects change."""
        from . import fastpath

        if self.kind != "bridge" or self._hooks_active or not fastpath.enabled():
            return None
        # Inside a guard only mechattr runs the model and its hooks go through self.hooks
        # (counted above): the scan over every module is done once per guarded call.
        if self._guard_depth and self._fast_in_guard is not False:
            return self._fast_in_guard
        fp = self._fast_path_scan()
        if self._guard_depth:
            self._fast_in_guard = fp
        return fp

    def _fast_path_scan(self) -> Any:
        from . import fastpath

        blocked, internal = fastpath.hook_state(self.model)
        if blocked:
            return None
        key = fastpath.fingerprint(self.model, internal)
        if self._fast_key != key:
            fp = fastpath.FastPath.build(self.model)
            if fp is not None:
                with self.guard():
                    why = fastpath.self_check_failure(fp, self)
                if why is not None:
                    # once per model state: the fingerprint below caches this verdict
                    warnings.warn(
                        f"mechattr's fast forward for this TransformerBridge ({self.name}) failed its "
                        f"self-check ({why}); the bridge's own (slower) forward is used instead. "
                        "Results are unaffected; set MECHATTR_FAST_PATH=0 to skip the check.",
                        FastPathWarning,
                        stacklevel=2,
                    )
                    fp = None
            # the self-check's forwards may have wired the bridge's own hooks: key after it
            self._fast_key = fastpath.fingerprint(self.model, fastpath.hook_state(self.model)[1])
            self._fast = fp
        return self._fast

    def logits(
        self,
        tokens: Int[Tensor, "batch pos"],
        embed: Float[Tensor, "batch pos d_model"] | None = None,
        positions: Sequence[int] | None = None,
        fwd_hooks: Sequence[tuple[str, Callable]] = (),
        _fast: bool = True,
    ) -> Float[Tensor, "batch k vocab"]:
        """Logits at ``positions`` only (all positions when None) — the unembedding of a
        50k vocabulary is skipped where no target reads it. Without hooks, a bridge runs its
        own weights through the plain Hugging Face forward (:meth:`fast_path`)."""
        if self._prefix is not None and _fast and not fwd_hooks:  # mechattr.tl.prefix: shared-prefix reuse
            out = self._prefix.logits(tokens, embed, positions)
            if out is not None:
                return out
        if _fast and not fwd_hooks:
            fp = self.fast_path()
            if fp is not None:
                return fp.logits(tokens, embed=embed, positions=positions)
        # The fast path applies ln_final/unembed outside the hooks context: hooks on them
        # (e.g. a frozen final-norm scale) need the full forward.
        touches_head = any(
            isinstance(n, str) and n.startswith(("ln_final", "unembed", "hook_unembed")) for n, _ in fwd_hooks
        )
        if not touches_head and self.fast_logits_ok() and not self._outer_hooks():
            resid = self.run_until(tokens, self.final_resid_hook, embed=embed, fwd_hooks=fwd_hooks)
            if positions is not None:
                resid = resid[:, list(positions)]
            return self.logits_from_resid(resid)
        hooks = list(fwd_hooks)
        if embed is not None:
            hooks.insert(0, (EMBED_HOOK, lambda x, hook: embed))
        with self.hooks(fwd_hooks=hooks):
            out = self.model(tokens)
        return out if positions is None else out[:, list(positions)]

    def _outer_hooks(self) -> bool:
        if self.kind != "bridge":
            return False
        from . import fastpath

        return fastpath.outer_hooks(self.model)

    def activation_bytes_per_token(self) -> int:
        """Rough bytes of autograd state one token costs in one forward+backward (for batching)."""
        cfg = self.cfg
        d_mlp = int(getattr(cfg, "d_mlp", None) or 4 * self.d_model)
        per_layer = 14 * self.d_model + 3 * d_mlp
        return int(per_layer * self.n_layers * self.W_E.element_size())

    def attention_bytes_per_token(self, seq_len: int, hook_free: bool = False) -> int:
        """Bytes of attention state per token in one forward+backward: ``heads x seq_len`` scores,
        probabilities and their gradient per layer for a pass that materialises the patterns;
        for a hook-free pass on the SDPA fast path (:mod:`mechattr.tl.fastpath`) a constant per
        head and layer (the kernel's log-sum-exp row statistics), no ``seq_len`` term."""
        if hook_free and self.sdpa_passes():
            return int(2 * self.n_heads * self.n_layers * 4)
        return int(3 * self.n_heads * seq_len * self.n_layers * self.W_E.element_size())

    def sdpa_passes(self) -> bool:
        """Whether hook-free passes on this model run scaled-dot-product attention."""
        fp = self.fast_path()
        return bool(fp is not None and getattr(fp, "sdpa", False))


class _CachedAdapter(ModelAdapter):
    """The adapter :func:`as_adapter` keeps per model: it holds its model weakly, so the cache
    (keyed weakly by the model) does not keep a model alive after the user lets go of it."""

    @property  # type: ignore[override]
    def model(self) -> Any:
        m = self._model_ref()
        if m is None:
            raise ModelError(
                "The model this adapter belonged to has been deleted; keep a reference to the model "
                "(or call mechattr.as_adapter(model) again on a live model)."
            )
        return m

    @model.setter
    def model(self, value: Any) -> None:
        self._model_ref = weakref.ref(value)


_ADAPTERS: "weakref.WeakKeyDictionary[Any, ModelAdapter]" = weakref.WeakKeyDictionary()


def as_adapter(model: Any, prepend_bos: bool | None = None) -> ModelAdapter:
    """The adapter of a TL model (cached per model object), or the adapter itself."""
    if isinstance(model, ModelAdapter):
        if prepend_bos is not None and prepend_bos != model.prepend_bos:
            return ModelAdapter(model.model, name=model.name, prepend_bos=prepend_bos)
        return model
    if prepend_bos is not None:
        return ModelAdapter(model, prepend_bos=prepend_bos)
    try:
        cached = _ADAPTERS.get(model)
    except TypeError:
        cached = None
    if cached is None:
        try:
            cached = _CachedAdapter(model)
            _ADAPTERS[model] = cached
        except TypeError:  # pragma: no cover - a model that cannot be weakly referenced
            cached = ModelAdapter(model)
    return cached
