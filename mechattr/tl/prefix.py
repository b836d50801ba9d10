"""Prefix reuse for perturbation forwards: the unperturbed prefix is computed once.

Why: a perturbation method (occlusion, LIME, KernelSHAP, Shapley sampling, exact Shapley)
evaluates many copies of one input that differ from it only at some positions. In a causal
model every position before a copy's first changed position ``s`` has exactly the hidden states,
keys and values of the unperturbed input. Running the unperturbed input once with a key/value
cache and then only the suffix ``s..P-1`` of each copy on top of that cache gives the same logits
(up to float rounding) for about half the work on occlusion and more on long inputs.

How: :func:`reuse` installs a :class:`PrefixRunner` on the adapter for the duration of a block;
:meth:`ModelAdapter.logits <mechattr.tl.adapter.ModelAdapter.logits>` hands it every hook-free
call. The runner finds each row's first position that differs from the unperturbed input (token
id, or token embedding when an embedding is passed), sorts the rows by it and splits them into
groups (a small dynamic programme over the distinct start positions minimises the number of
token rows run plus a per-forward overhead); each group runs from its smallest start on the
cached keys/values of the prefix, expanded (not copied) to the group's size. Read positions
before a group's start take the unperturbed input's final hidden state.

Backends:

* TransformerBridge on the fast path (:mod:`mechattr.tl.fastpath`): the Hugging Face module
  tree's own cache (``DynamicCache``; models with sliding-window or otherwise non-plain cache
  layers are refused).
* TL 3 ``HookedTransformer``: TransformerLens's key/value cache, frozen (so the shared prefix is
  never appended to), with an explicit all-ones attention mask.
* Anything else (a bridge whose fast path is off or blocked by a user's hook, a target that
  passes hooks): the plain computation; the reason is kept in the diagnostics
  (``prefix_reuse``).

``MECHATTR_PREFIX_REUSE=0`` turns it off; ``MECHATTR_PREFIX_OVERHEAD`` sets the per-forward
overhead in token rows the grouping assumes. By default it comes from the model's width (one more
forward of a tiny model costs as much as hundreds of token rows), at least 32 on a CPU (small
batches run their matrix products far below peak; measured on 20-token occlusion with the
GPT-2-small-shaped model: 8 and 40 both about 0.8x the plain time, 120 about 0.95x) and at least
256 on CUDA (one more small forward costs more kernel launches than many token rows).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def enabled() -> bool:
    return os.environ.get("MECHATTR_PREFIX_REUSE", "1").strip().lower() not in {"0", "false", "no", "off"}


def _overhead(device: torch.device, adapter: Any) -> int:
    """What one more forward costs, in token rows: a fixed launch/Python cost per layer over the
    cost of one token row in one layer (about 12 d_model^2 multiply-adds). Small models are
    overhead-bound (a tiny 2-layer model: a few hundred rows; GPT-2-small on a CPU: a few), and a
    GPU makes every row cheap against its kernel launches."""
    env = os.environ.get("MECHATTR_PREFIX_OVERHEAD")
    if env:
        return max(0, int(env))
    d = int(adapter.d_model)
    d_mlp = int(getattr(adapter.cfg, "d_mlp", None) or 4 * d)
    per_layer = 4 * d * d + 3 * d * d_mlp // 2 + 2 * d * d_mlp // 2  # attention + MLP weights, roughly
    if device.type == "cuda":
        return max(256, int(2e9 / per_layer))
    return max(32, int(2e7 / per_layer))


def first_changed(masks: Bool[Tensor, "n pos"]) -> Int[Tensor, " n"]:
    """Index of each row's first True (``pos`` where a row has none)."""
    P = masks.shape[-1]
    idx = torch.arange(P, device=masks.device)
    return torch.where(masks, idx, P).min(-1).values


def sort_order(masks: Bool[Tensor, "n pos"]) -> Int[Tensor, " n"]:
    """A stable order of the rows by their first changed position."""
    return torch.sort(first_changed(masks), stable=True).indices


def plan_groups(starts: Sequence[int], n_pos: int, overhead: int) -> list[tuple[int, int]]:
    """Split rows sorted by ``starts`` into contiguous groups ``(begin, end)``.

    A group runs every row from the group's smallest start, costing ``rows * (n_pos - start)``
    token rows plus ``overhead`` for the forward. Exact minimum over the splits at distinct start
    values (dynamic programme, one vectorised step per distinct value)."""
    s = np.asarray(starts, dtype=np.int64)
    n = len(s)
    if n == 0:
        return []
    uniq, first_idx, counts = np.unique(s, return_index=True, return_counts=True)
    U = len(uniq)
    cum = np.concatenate([[0], np.cumsum(counts)])  # rows before distinct value i
    best = np.zeros(U + 1)
    arg = np.zeros(U + 1, dtype=np.int64)
    for j in range(1, U + 1):
        i = np.arange(j)  # group covers distinct values i .. j-1
        cost = best[:j] + (cum[j] - cum[i]) * (n_pos - uniq[i]) + overhead
        k = int(np.argmin(cost))
        best[j], arg[j] = cost[k], k
    groups = []
    j = U
    while j > 0:
        i = int(arg[j])
        groups.append((int(cum[i]), int(cum[j])))
        j = i
    return groups[::-1]


class PrefixRunner:
    """Logits of rows that share a prefix with one unperturbed input (see the module docstring)."""

    def __init__(self, adapter: Any, tokens: Int[Tensor, "1 pos"], stats: dict[str, Any]) -> None:
        self.adapter = adapter
        self.tokens = tokens
        self.stats = stats
        self.backend: str | None = None
        self._state: Any = None
        self._base_embed: Tensor | None = None
        self._ready = False
        self._checked: bool | None = None

    # ----- set-up -------------------------------------------------------------------------------
    def _why_not(self) -> str | None:
        a = self.adapter
        if a.kind == "hooked":
            from . import fastpath

            if a._hooks_active or fastpath.hook_state(a.model)[0]:
                return "hooks are attached to the model (they may depend on absolute positions)"
            if not a.fast_logits_ok():
                return "ln_final + unembed do not reproduce this model's logits"
            self.backend = "hooked"
            return None
        fp = a.fast_path()
        if fp is None:
            from . import fastpath

            if not fastpath.enabled():
                return "the bridge fast path is off (MECHATTR_FAST_PATH=0); the bridge's own forward takes no cache here"
            return "the bridge fast path is not available (a hook on the model or a failed self-check)"
        cfg = fp.hf.config
        layer_types = getattr(cfg, "layer_types", None) or []
        if getattr(cfg, "sliding_window", None) or any("sliding" in str(t) for t in layer_types):
            return "sliding-window attention layers (their cache is not a plain prefix)"
        self.backend = "hf"
        self._fp = fp
        return None

    def _available(self) -> bool:
        """Whether a backend applies (checked once; the reason is kept when none does)."""
        if self._checked is None:
            why = self._why_not()
            if why is not None:
                self.backend = None
                self.stats["fallback"] = why
            self._checked = why is None
        return self._checked

    def _prepare(self) -> bool:
        if self._ready:
            return self.backend is not None
        self._ready = True
        if not self._available():
            return False
        with torch.no_grad():
            self._state = self._hf_prefix() if self.backend == "hf" else self._hooked_prefix()
        if self._state is None:
            self.stats["fallback"] = f"the {self.backend} backend could not build the prefix cache"
            self.backend = None
            return False
        self.stats["backend"] = self.backend
        return True

    # ----- Hugging Face (bridge fast path) ------------------------------------------------------
    def _hf_prefix(self) -> Any:
        fp = self._fp
        out = fp.base(input_ids=self.tokens, use_cache=True, return_dict=True)
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            return None
        kv = []
        for item in cache:
            k, v = item[0], item[1]
            if k is None or v is None or k.shape[-2] != self.tokens.shape[-1]:
                return None
            kv.append((k, v))
        return kv, out.last_hidden_state[0]

    def _hf_suffix(self, s: int, tokens: Tensor, embed: Tensor | None) -> Tensor:
        from transformers import DynamicCache

        fp = self._fp
        kv, _ = self._state
        B = tokens.shape[0]
        cache = DynamicCache(
            ddp_cache_data=[(k[:, :, :s].expand(B, -1, -1, -1), v[:, :, :s].expand(B, -1, -1, -1)) for k, v in kv]
        )
        kw = {fp.cache_kw: cache}
        with fp.autocast():
            if embed is None:
                out = fp.base(input_ids=tokens[:, s:], use_cache=True, return_dict=True, **kw)
            else:
                out = fp.base(inputs_embeds=embed[:, s:], use_cache=True, return_dict=True, **kw)
        return out.last_hidden_state

    # ----- TL 3 HookedTransformer ---------------------------------------------------------------
    def _hooked_prefix(self) -> Any:
        try:
            from transformer_lens.past_key_value_caching import HookedTransformerKeyValueCache as KVCache
        except ImportError:  # TL >= 3.x layout
            try:
                from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache as KVCache
            except ImportError:
                return None
        m = self.adapter.model
        cache = KVCache.init_cache(m.cfg, m.cfg.device, 1)
        box: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: Any) -> None:
            box["h"] = x

        with self.adapter.hooks(fwd_hooks=[(self.adapter.final_resid_hook, grab)]):
            m(self.tokens, past_kv_cache=cache, attention_mask=torch.ones_like(self.tokens))
        if "h" not in box:
            return None
        kv = [(e.past_keys, e.past_values) for e in cache.entries]
        if any(k.shape[1] != self.tokens.shape[-1] for k, _ in kv):
            return None
        return KVCache, kv, box["h"][0]

    def _hooked_suffix(self, s: int, tokens: Tensor, embed: Tensor | None) -> Tensor:
        from ..tl.adapter import EMBED_HOOK

        KVCache, kv, _ = self._state
        entry_cls = type(KVCache.init_cache(self.adapter.model.cfg, self.adapter.model.cfg.device, 1).entries[0])
        B = tokens.shape[0]
        entries = [
            entry_cls(past_keys=k[:, :s].expand(B, -1, -1, -1), past_values=v[:, :s].expand(B, -1, -1, -1), frozen=True)
            for k, v in kv
        ]
        dev = tokens.device
        cache = KVCache(entries=entries, previous_attention_mask=torch.ones(B, s, dtype=torch.int, device=dev), frozen=True)
        box: dict[str, Tensor] = {}

        def grab(x: Tensor, hook: Any) -> None:
            box["h"] = x

        hooks = [(self.adapter.final_resid_hook, grab)]
        if embed is not None:
            suffix = embed[:, s:]
            hooks.insert(0, (EMBED_HOOK, lambda x, hook: suffix))
        with self.adapter.hooks(fwd_hooks=hooks):
            self.adapter.model(tokens[:, s:], past_kv_cache=cache, attention_mask=torch.ones_like(tokens[:, s:]))
        return box["h"]

    # ----- the logits call ----------------------------------------------------------------------
    def _head(self, h: Tensor) -> Tensor:
        if self.backend == "hf":
            with self._fp.autocast():
                out = self._fp.head(h)
            return self._fp._out(out, h)
        return self.adapter.logits_from_resid(h)

    def logits(
        self,
        tokens: Int[Tensor, "batch pos"],
        embed: Float[Tensor, "batch pos d_model"] | None,
        positions: Sequence[int] | None,
    ) -> Tensor | None:
        """Logits like :meth:`ModelAdapter.logits`, or None when this call cannot reuse the
        prefix (then the caller runs the plain forward)."""
        P = self.tokens.shape[-1]
        st = self.stats
        if tokens.shape[-1] != P or torch.is_grad_enabled() or not self._available():
            if tokens.shape[-1] != P:
                st["calls_other_length"] = st.get("calls_other_length", 0) + 1
            return None
        if embed is not None:
            if self._base_embed is None:
                with torch.no_grad():
                    self._base_embed = self.adapter.embed(self.tokens)
            diff = (embed != self._base_embed.to(embed.dtype)).any(-1)
        else:
            diff = tokens != self.tokens
        starts = first_changed(diff)
        order = torch.sort(starts, stable=True).indices
        starts_sorted = starts[order].tolist()  # one transfer per batch, not per row
        B = tokens.shape[0]
        done = [i for i, s in enumerate(starts_sorted) if s >= P]
        todo = len(starts_sorted) - len(done)
        over = _overhead(tokens.device, self.adapter)
        groups = plan_groups(starts_sorted[:todo], P, over)
        # Worth it? The plain batch is one forward of B x P rows; reuse runs the groups (and, once,
        # the unperturbed input). Where reuse would not be cheaper the plain forward runs.
        reuse_cost = sum((e - b) * (P - starts_sorted[b]) + over for b, e in groups)
        if not self._ready:
            reuse_cost += P + over
        if reuse_cost >= B * P + over:
            st["plain_batches"] = st.get("plain_batches", 0) + 1
            return None
        if not self._prepare():
            return None
        h0 = self._state[-1]  # [P, d] final hidden state of the unperturbed input
        pos = list(range(P)) if positions is None else list(positions)
        pos_t = torch.tensor(pos, dtype=torch.long, device=tokens.device)
        hidden = h0.new_empty((B, len(pos), h0.shape[-1]))
        if done:
            rows = order[done[0]:]
            hidden[rows] = h0[pos_t].to(hidden.dtype)
        run = 0
        for b, e in groups:
            s = starts_sorted[b]
            rows = order[b:e]
            suffix = (
                self._hf_suffix(s, tokens[rows], None if embed is None else embed[rows])
                if self.backend == "hf"
                else self._hooked_suffix(s, tokens[rows], None if embed is None else embed[rows])
            )
            # read positions before the start come from the unperturbed input
            before = pos_t < s
            h = torch.where(
                before[None, :, None],
                h0[pos_t.clamp(max=P - 1)][None].to(suffix.dtype),
                suffix[:, (pos_t - s).clamp(min=0)],
            )
            hidden[rows] = h.to(hidden.dtype)
            run += (e - b) * (P - s)
        st["rows"] = st.get("rows", 0) + B
        st["forwards"] = st.get("forwards", 0) + len(groups)
        st["token_rows_run"] = st.get("token_rows_run", 0) + run
        st["token_rows_plain"] = st.get("token_rows_plain", 0) + B * P
        return self._head(hidden)


@contextlib.contextmanager
def reuse(ctx: Any) -> Iterator[PrefixRunner | None]:
    """Within the block, hook-free no-grad logits of ``ctx.adapter`` on rows of ``ctx.tokens``'s
    length reuse the unperturbed prefix (nested blocks keep the outer runner)."""
    a = ctx.adapter
    stats = ctx.__dict__.setdefault("_prefix_stats", {})
    if not enabled():
        stats["fallback"] = "turned off (MECHATTR_PREFIX_REUSE=0)"
        yield None
        return
    if a._prefix is not None:
        yield a._prefix
        return
    runner = PrefixRunner(a, ctx.tokens, stats)
    a._prefix = runner
    try:
        yield runner
    finally:
        a._prefix = None


def diagnostics(ctx: Any) -> dict[str, Any]:
    """``{"prefix_reuse": {...}}`` for a call that evaluated perturbations, else ``{}``: the
    backend, token rows run against the plain computation's, or why it fell back."""
    st = getattr(ctx, "_prefix_stats", None)
    if not st:
        return {}
    out = dict(st)
    if "backend" not in out and "fallback" not in out and out.get("plain_batches"):
        out["fallback"] = "no batch was cheaper with reuse than plain (changes start too early or the model is overhead-bound)"
    if out.get("token_rows_plain"):
        out["work_fraction"] = out["token_rows_run"] / out["token_rows_plain"]
    return {"prefix_reuse": out}


__all__ = ["PrefixRunner", "reuse", "diagnostics", "plan_groups", "first_changed", "sort_order", "enabled"]
