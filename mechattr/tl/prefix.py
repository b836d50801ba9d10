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

Packing (Hugging Face backend): instead of groups padded to their earliest start, the changed
suffixes of a batch are laid end to end in one sequence (or a few, ``MECHATTR_PREFIX_PACK_TOKENS``
token rows each, default max(256, input length)) with an explicit attention mask (each token sees
the unperturbed prefix before its row's first change and its own row's earlier tokens) and
explicit ``position_ids``; the unperturbed input leads the first pack, so there is no separate
prefix forward. That runs exactly the changed token rows plus the input once (occlusion at 20
tokens: 210 of 400 rows, against 271 + a prefix forward for the best grouping) for masked
attention over the pack; the cost rule picks packing or grouping, whichever it rates cheaper.
A one-time check per fast path compares a packed row with the plain forward; a model class that
ignores custom masks or positions falls back to groups (``packing_fallback`` in the diagnostics).
``MECHATTR_PREFIX_PACK=0`` turns packing off, ``=force`` packs every batch (tests, measurements).

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


def packing_enabled() -> bool:
    return os.environ.get("MECHATTR_PREFIX_PACK", "1").strip().lower() not in {"0", "false", "no", "off"}


def packing_forced() -> bool:
    """``MECHATTR_PREFIX_PACK=force``: pack every batch with a changed row, whatever the cost rule
    says (tests, measurements)."""
    return os.environ.get("MECHATTR_PREFIX_PACK", "").strip().lower() == "force"


def pack_budget(n_pos: int) -> int:
    """Token rows per packed forward: at least the input's length (a pack holds whole suffixes)."""
    env = os.environ.get("MECHATTR_PREFIX_PACK_TOKENS")
    return max(n_pos, int(env) if env else 256)


def plan_packs(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Split rows (in order) into contiguous packs ``(begin, end)`` whose suffix lengths sum to
    at most ``budget`` (a row longer than the budget gets a pack of its own)."""
    packs, b, tot = [], 0, 0
    for i, n in enumerate(lengths):
        if i > b and tot + n > budget:
            packs.append((b, i))
            b, tot = i, 0
        tot += n
    if len(lengths):
        packs.append((b, len(lengths)))
    return packs


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

    def _hf_packed(
        self,
        starts: Sequence[int],
        tokens: Int[Tensor, "n pos"],
        embed: Float[Tensor, "n pos d_model"] | None,
        pos_t: Int[Tensor, " read"],
        fuse: bool = False,
    ) -> Float[Tensor, "n read d_model"]:
        """Final hidden states at ``pos_t`` of rows whose suffixes run packed into ONE sequence.

        Row ``r``'s suffix (positions ``starts[r]..P-1``) is laid end to end with the other rows'
        suffixes; an explicit attention mask lets each of its tokens see the unperturbed prefix
        before ``starts[r]`` and its own row's earlier suffix tokens only, and ``position_ids``
        carry the absolute positions. The sequence holds exactly the token rows that changed, with
        no padding to a group's earliest start (what :func:`plan_groups` pays); the price is
        attention over the whole pack, masked. With ``fuse`` the unperturbed input itself leads
        the pack (causal over itself) instead of coming from the cache, and its keys, values and
        hidden states become the runner's prefix state: no separate prefix forward."""
        from transformers import DynamicCache

        fp = self._fp
        P = tokens.shape[-1]
        dev = tokens.device
        s_t = torch.as_tensor(list(starts), dtype=torch.long, device=dev)
        lens = P - s_t
        n0 = P if fuse else 0  # leading unperturbed tokens in the pack
        row = torch.repeat_interleave(torch.arange(len(starts), device=dev), lens)  # [L]
        offs = torch.cumsum(lens, 0) - lens
        local = torch.arange(row.numel(), device=dev) - offs[row]
        position = s_t[row] + local
        allowed = torch.cat(
            [
                torch.arange(P, device=dev)[None, :] < s_t[row][:, None],  # the unperturbed prefix
                (row[None, :] == row[:, None]) & (local[None, :] <= local[:, None]),  # own suffix, causal
            ],
            dim=1,
        )
        if embed is None:
            x = tokens[row, position]
        else:
            x = embed[row, position]
        if fuse:
            ar = torch.arange(P, device=dev)
            head = torch.cat([ar[None, :] <= ar[:, None], allowed.new_zeros(P, row.numel())], dim=1)
            allowed = torch.cat([head, allowed], dim=0)
            position = torch.cat([ar, position])
            if embed is None:
                x = torch.cat([self.tokens[0], x])
            else:
                x = torch.cat([self._base_embed_for(embed)[0], x])
            kw: dict[str, Any] = {}
        else:
            kv, _ = self._state
            kw = {fp.cache_kw: DynamicCache(ddp_cache_data=[(k, v) for k, v in kv])}
        if fp.sdpa:
            mask = allowed[None, None]
        else:  # eager attention adds the mask to its scores
            dt = fp.head.weight.dtype
            mask = torch.zeros(allowed.shape, dtype=dt, device=dev).masked_fill_(~allowed, torch.finfo(dt).min)[None, None]
        kw.update(attention_mask=mask, position_ids=position[None])
        with fp.autocast():
            if embed is None:
                out = fp.base(input_ids=x[None], use_cache=True, return_dict=True, **kw)
            else:
                out = fp.base(inputs_embeds=x[None], use_cache=True, return_dict=True, **kw)
        hs = out.last_hidden_state[0]
        if fuse:
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            kv = [(item[0][:, :, :P], item[1][:, :, :P]) for item in cache]
            self._state = (kv, hs[:P])
            hs = hs[P:]
        h0 = self._state[-1]
        before = pos_t[None, :] < s_t[:, None]  # [n, read]
        idx = offs[:, None] + (pos_t[None, :] - s_t[:, None]).clamp(min=0)
        return torch.where(before[..., None], h0[pos_t][None].to(hs.dtype), hs[idx.clamp(max=hs.shape[0] - 1)])

    def _base_embed_for(self, like: Tensor) -> Tensor:
        if self._base_embed is None:
            with torch.no_grad():
                self._base_embed = self.adapter.embed(self.tokens)
        return self._base_embed.to(like.dtype)

    def _pack_ok(self, tokens: Tensor, embed: Tensor | None, s: int, pos_t: Tensor) -> bool:
        """Once per fast path: packed rows give the plain forward's hidden states (a model class
        that ignores ``position_ids`` or custom masks would not); else packing stays off."""
        fp = self._fp
        ok = getattr(fp, "_packing_ok", None)
        if ok is None:
            one = tokens[:1]
            saved = self._state
            packed = self._hf_packed([s], one, None if embed is None else embed[:1], pos_t, fuse=True)
            self._state = saved
            with fp.autocast():
                ref = (fp.base(input_ids=one, use_cache=False, return_dict=True) if embed is None else
                       fp.base(inputs_embeds=embed[:1], use_cache=False, return_dict=True)).last_hidden_state
            ref = ref[:, pos_t]
            tol = 1e-4 * float(ref.abs().max().clamp_min(1.0))
            ok = bool(torch.isfinite(packed).all()) and float((packed.float() - ref.float()).abs().max()) <= tol
            fp._packing_ok = ok
            if not ok:
                self.stats["packing_fallback"] = "packed suffixes did not reproduce the plain forward for this model"
        return ok

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
        group_cost = reuse_cost
        # Packing (hf backend): every changed suffix exactly once, laid end to end in a few
        # sequences; its extra cost is masked attention over the pack, about (P + L) / (6 d_model)
        # of a token row's work per token (attention ~4 d per key against ~24 d^2 for the weights).
        packs: list[tuple[int, int]] = []
        if self.backend == "hf" and packing_enabled() and todo:
            lens = [P - s for s in starts_sorted[:todo]]
            budget = pack_budget(P)
            packs = plan_packs(lens, budget)
            pack_cost = sum(lens) * (1 + (P + budget) / (6 * int(self.adapter.d_model))) + len(packs) * over
            if not self._ready:
                pack_cost += over  # the unperturbed input leads the first pack (no separate forward)
            if pack_cost < reuse_cost or packing_forced():
                reuse_cost = pack_cost
            else:
                packs = []
        if reuse_cost >= B * P + over and not (packs and packing_forced()):
            st["plain_batches"] = st.get("plain_batches", 0) + 1
            return None
        pos = list(range(P)) if positions is None else list(positions)
        pos_t = torch.tensor(pos, dtype=torch.long, device=tokens.device)
        if packs:
            first = order[packs[0][0]:packs[0][0] + 1]
            if not self._pack_ok(tokens[first], None if embed is None else embed[first], starts_sorted[0], pos_t):
                packs = []
                if group_cost >= B * P + over:
                    st["plain_batches"] = st.get("plain_batches", 0) + 1
                    return None
        fuse = bool(packs) and not self._ready
        if fuse:
            self._ready = True  # the first pack computes the prefix state
            self.stats["backend"] = self.backend
        elif not self._prepare():
            return None
        hidden = None
        run = 0
        for i, (b, e) in enumerate(packs):
            rows = order[b:e]
            h = self._hf_packed(starts_sorted[b:e], tokens[rows], None if embed is None else embed[rows], pos_t,
                                fuse=fuse and i == 0)
            if hidden is None:
                hidden = h.new_empty((B, len(pos), h.shape[-1]))
            hidden[rows] = h.to(hidden.dtype)
            run += sum(P - s for s in starts_sorted[b:e])
        if fuse:
            run += P
        if packs:
            st["packed_forwards"] = st.get("packed_forwards", 0) + len(packs)
            groups = []
        h0 = self._state[-1]  # [P, d] final hidden state of the unperturbed input
        if hidden is None:
            hidden = h0.new_empty((B, len(pos), h0.shape[-1]))
        if done:
            rows = order[done[0]:]
            hidden[rows] = h0[pos_t].to(hidden.dtype)
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
        st["forwards"] = st.get("forwards", 0) + len(groups) + len(packs)
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


__all__ = [
    "PrefixRunner", "reuse", "diagnostics", "plan_groups", "plan_packs", "first_changed", "sort_order", "enabled",
    "packing_enabled",
]
