"""Removing tokens from an input and re-evaluating the attributed target, batched.

A private stand-in for the shared perturbation module: validation needs exactly one operation,
"the target's value on the input with the positions in ``mask`` removed", for many masks at once.
Removal strategies (what "removed" means changes the numbers; DeYoung et al. 2020 delete tokens,
Samek et al. 2017 replace them, Hase et al. 2021 warn that both leave the training distribution):

- ``delete``: drop the tokens; the sequence gets shorter and the read positions move left. Only
  tokens before the first read position may be deleted, and only :class:`LogitPlan` targets
  (whose read positions are known) support it.
- ``unk`` / ``pad`` / ``eos`` / ``mask``: replace by that special token (``pad`` falls back to eos).
- ``zero`` / ``mean``: replace the token embedding by zeros / the mean embedding.
- ``plausible``: replace by a token sampled from the model's own next-token distribution at the
  previous position (the original token excluded), seeded; one fixed replacement per position so
  that every ordering compared is perturbed the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from ..tl.adapter import ModelAdapter
from ..errors import InputError
from ..contract import Context
from ..targets import LogitPlan, Plan

try:  # the shared perturbation module; this file's own code is the fallback when it is absent
    from .. import perturb as _perturb
except ImportError:  # pragma: no cover - depends on which modules are installed
    _perturb = None

TOKEN_STRATEGIES = ("unk", "pad", "eos", "mask")
EMBED_STRATEGIES = ("zero", "mean")
STRATEGIES = ("auto", "delete", "plausible") + TOKEN_STRATEGIES + EMBED_STRATEGIES


def default_strategy(adapter: ModelAdapter) -> str:
    """'unk' when the tokenizer has an unknown token distinct from BOS/EOS (GPT-2's
    <|endoftext|> is a document separator, not a blank), else 'zero'."""
    unk = adapter.special_token_id("unk")
    return "unk" if unk is not None and unk not in {adapter.special_token_id("bos"), adapter.special_token_id("eos")} else "zero"


class Remover:
    """Evaluates ``plan`` on its input with sets of positions removed (one mask per row)."""

    def __init__(
        self,
        adapter: ModelAdapter,
        plan: Plan,
        fixed: Bool[Tensor, " pos"],
        strategy: str = "unk",
        seed: int = 0,
        memory_mb: float = 2048.0,
        batch_size: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise InputError(f"Unknown replacement strategy {strategy!r}; choose one of {list(STRATEGIES)}.")
        if strategy == "auto":
            strategy = default_strategy(adapter)
        self.adapter, self.plan, self.strategy, self.seed = adapter, plan, strategy, int(seed)
        self.tokens = plan.tokens
        self.n_pos = int(self.tokens.shape[-1])
        self._ctx = Context(
            adapter=adapter, plan=plan, memory_mb=memory_mb, batch_size=batch_size, seed=int(seed), fixed=fixed
        )
        removable = ~fixed.clone().to(self.tokens.device)
        if strategy == "delete":
            if not isinstance(plan, LogitPlan):
                raise InputError(
                    "replacement='delete' needs a target whose read positions are known (next token, "
                    "contrast, forced continuation); for a function target use replacement='unk' or 'zero'."
                )
            first_read = min(plan.positions)
            removable[first_read:] = False
        self.removable = removable
        self._fill_ids: Tensor | None = None
        self._fill_embed: Tensor | None = None
        self._prepare()

    def _prepare(self) -> None:
        a, s = self.adapter, self.strategy
        if _perturb is not None:
            self._rep = _perturb.resolve_replacement(self._ctx, s)
            return
        if s in TOKEN_STRATEGIES:
            tid = a.special_token_id(s)
            if tid is None and s == "pad":
                tid = a.special_token_id("eos")
            if tid is None:
                raise InputError(
                    f"The tokenizer has no {s} token, so replacement={s!r} is undefined; "
                    "use 'unk', 'pad', 'zero', 'mean', 'delete' or 'plausible'."
                )
            self._fill_ids = torch.full_like(self.tokens[0], int(tid))
        elif s == "plausible":
            with torch.no_grad(), a.guard():
                logits = a.logits(self.tokens)[0].double()  # [pos, vocab]
            g = torch.Generator(device="cpu").manual_seed(self.seed + 7919)
            probs = torch.softmax(logits, -1).cpu()
            # The token at i is drawn from the prediction made at i - 1, never the original token.
            probs[:-1].scatter_(1, self.tokens[0, 1:].cpu()[:, None], 0.0)
            drawn = torch.multinomial(probs[:-1] / probs[:-1].sum(-1, keepdim=True), 1, generator=g)[:, 0]
            unk = a.special_token_id("unk")
            first = unk if unk is not None else a.special_token_id("eos")
            first = int(first) if first is not None else int(self.tokens[0, 0])
            self._fill_ids = torch.cat([torch.tensor([first]), drawn]).to(self.tokens.device)
        elif s in EMBED_STRATEGIES:
            x = a.embed(self.tokens)[0]
            if s == "zero":
                self._fill_embed = torch.zeros_like(x)
            else:
                self._fill_embed = a.W_E.detach().mean(0).to(x).expand_as(x).clone()
            self._input_embed = x


    def evaluate(self, masks: Bool[Tensor, "n pos"]) -> Float[Tensor, "n rows"]:
        """Target values with ``masks[i]`` removed, for every i. Batch splits do not change results."""
        masks = masks.to(self.tokens.device).bool()
        if masks.dim() != 2 or masks.shape[1] != self.n_pos:
            raise InputError(f"masks must have shape [n, {self.n_pos}], got {tuple(masks.shape)}.")
        if bool((masks & ~self.removable).any()):
            raise InputError("A mask removes a position that cannot be removed (BOS or a read position).")
        if _perturb is not None:
            with self.adapter.guard():
                return _perturb.perturbed_values(self._ctx, masks, self._rep).double().cpu()
        out = torch.empty(masks.shape[0], self.plan.n_rows, dtype=torch.float64)
        if self.strategy == "delete":
            counts = masks.sum(-1)
            for c in counts.unique().tolist():
                idx = torch.nonzero(counts == c)[:, 0]
                out[idx.cpu()] = self._eval_delete(masks[idx], int(c))
            return out
        n = masks.shape[0]
        with torch.no_grad(), self.adapter.guard():
            for sl in self._ctx.batches(n, with_grad=False):
                m = masks[sl]
                toks = self.tokens.expand(m.shape[0], -1)
                emb = None
                if self._fill_ids is not None:
                    toks = torch.where(m, self._fill_ids[None], toks)
                else:
                    emb = torch.where(m[..., None], self._fill_embed[None], self._input_embed[None])
                out[sl] = self.plan.evaluate(self.adapter, toks, emb).double().cpu()
        return out

    def _eval_delete(self, masks: Tensor, count: int) -> Tensor:
        keep = ~masks
        n_keep = self.n_pos - count
        toks = self.tokens.expand(masks.shape[0], -1)[keep].reshape(masks.shape[0], n_keep)
        plan: Any = dataclasses.replace(self.plan, positions=[p - count for p in self.plan.positions])
        res = []
        with torch.no_grad(), self.adapter.guard():
            for sl in self._ctx.batches(masks.shape[0], with_grad=False):
                res.append(plan.evaluate(self.adapter, toks[sl]).double().cpu())
        return torch.cat(res, 0)

    def full_value(self) -> Float[Tensor, " rows"]:
        return self.evaluate(torch.zeros(1, self.n_pos, dtype=torch.bool))[0]
