"""The tools being compared, each behind the same small interface.

Every runner takes a :class:`Job` (token ids with BOS first, the target rows, the number of IG
steps) and returns the attribution as a numpy array ``[rows, prompt_tokens - 1]`` (BOS dropped:
no tool attributes it), so agreement between tools is one subtraction.

Shared conventions, chosen so that all tools do the same computation:
- target: log-probability of the forced token(s) at the last prompt position (and, for a forced
  continuation, of each continuation token given the tokens before it);
- baseline: token id 0 at every attributed position, BOS kept (Captum's ``TextTokenInput``
  default ``baselines=0``); Inseq's unknown-token baseline is pointed at id 0 too;
- step rule: Gauss-Legendre (the default of all three libraries);
- IG interpolates the token embedding only (the output of ``wte`` / ``hook_embed``); positions
  stay fixed, as in all three libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

BOS = 50256
BASELINE_ID = 0


@dataclass
class Job:
    ids: list[int]  # prompt token ids, BOS first
    targets: list[int]  # one forced token, or a forced continuation
    n_steps: int = 50
    ig_batch: int | None = None  # steps per forward (same for every tool); None: all at once

    @property
    def n_prompt(self) -> int:
        return len(self.ids)


def gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor(0.5 * (x + 1), dtype=torch.float32), torch.tensor(0.5 * w, dtype=torch.float32)


# ------------------------------------------------------------------------------------- mechattr
class Mechattr:
    name = "mechattr"

    def __init__(self, model_dir: str) -> None:
        import mechattr as ma

        self.ma = ma
        self.model = ma.load_model(model_dir)

    def _target(self, job: Job) -> Any:
        return job.targets[0] if len(job.targets) == 1 else self.ma.ForcedContinuation(list(job.targets))

    def _run(self, job: Job, method: str, **params: Any) -> np.ndarray:
        toks = torch.tensor(job.ids)
        res = self.ma.attribute(self.model, toks, self._target(job), method=method, **params)
        s = res.scores.detach().float().numpy()
        return s[..., 1 : job.n_prompt]

    def ig(self, job: Job) -> np.ndarray:
        kw = {"batch_size": job.ig_batch} if job.ig_batch else {}
        return self._run(job, "integrated_gradients", n_steps=job.n_steps, baseline=BASELINE_ID,
                         rule="gausslegendre", **kw)

    def ixg(self, job: Job) -> np.ndarray:
        return self._run(job, "input_x_gradient")

    def saliency(self, job: Job) -> np.ndarray:
        # L1 of the gradient: what Captum's Saliency (abs=True) summed over d_model gives in Inseq.
        return self._run(job, "saliency", reduce="l1")

    def occlusion(self, job: Job) -> np.ndarray:
        return self._run(job, "occlusion", replacement=BASELINE_ID)

    def rollout(self, job: Job) -> np.ndarray:
        return self._run(job, "attention_rollout")

    def forward(self, job: Job) -> None:
        with torch.no_grad():
            self.model(torch.tensor([job.ids]))


# --------------------------------------------------------------------------------------- Captum
class Captum:
    name = "captum"

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
        self.tok = AutoTokenizer.from_pretrained(model_dir)

    def _inp(self, job: Job) -> Any:
        from captum.attr import TextTokenInput

        text = self.tok.decode(job.ids)
        inp = TextTokenInput(text, self.tok, baselines=BASELINE_ID, skip_tokens=[BOS])
        got = inp.to_model_input().reshape(-1).tolist()
        if got != job.ids:
            raise RuntimeError("Captum tokenised the prompt differently from the other tools.")
        return inp

    def ig(self, job: Job) -> np.ndarray:
        from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

        lig = LLMGradientAttribution(LayerIntegratedGradients(self.model, self.model.transformer.wte), self.tok)
        res = lig.attribute(self._inp(job), target=torch.tensor(job.targets), n_steps=job.n_steps,
                            method="gausslegendre", internal_batch_size=job.ig_batch)
        return res.token_attr.detach().float().numpy()

    def ixg(self, job: Job) -> np.ndarray:
        from captum.attr import LayerGradientXActivation, LLMGradientAttribution

        gxa = LLMGradientAttribution(LayerGradientXActivation(self.model, self.model.transformer.wte), self.tok)
        res = gxa.attribute(self._inp(job), target=torch.tensor(job.targets))
        return res.token_attr.detach().float().numpy()

    def occlusion(self, job: Job) -> np.ndarray:
        from captum.attr import FeatureAblation, LLMAttribution

        fa = LLMAttribution(FeatureAblation(self.model), self.tok)
        res = fa.attribute(self._inp(job), target=torch.tensor(job.targets))
        return res.seq_attr.detach().float().numpy()[None]

    def forward(self, job: Job) -> None:
        with torch.no_grad():
            self.model(torch.tensor([job.ids]))


# ---------------------------------------------------------------------------------------- Inseq
def _logprob_step(args: Any) -> torch.Tensor:
    """Inseq has no log-probability step function; this is its probability one in log space."""
    logits = args.attribution_model.output2logits(args.forward_output)
    ids = args.target_ids.reshape(logits.shape[0], 1).to(logits.device)
    return logits.log_softmax(dim=-1).gather(-1, ids).squeeze(-1)


class Inseq:
    name = "inseq"

    def __init__(self, model_dir: str) -> None:
        import inseq

        try:
            inseq.register_step_function(_logprob_step, "bench_logprob", overwrite=True)
        except TypeError:  # pragma: no cover - older signature
            inseq.register_step_function(_logprob_step, "bench_logprob")
        self.model = inseq.load_model(model_dir, "integrated_gradients", model_kwargs={"attn_implementation": "eager"})
        # Inseq's baseline is the unknown token (kept at EOS/BOS positions): point it at id 0.
        self.model.tokenizer.unk_token = self.model.tokenizer.convert_ids_to_tokens(BASELINE_ID)
        self.tok = self.model.tokenizer

    def _texts(self, job: Job) -> tuple[str, str]:
        prompt = self.tok.decode(job.ids)
        full = self.tok.decode(job.ids + job.targets)
        if self.tok(full)["input_ids"] != job.ids + job.targets:
            raise RuntimeError("Inseq would tokenise the prompt + continuation differently.")
        return prompt, full

    def _run(self, job: Job, method: str, **kw: Any) -> np.ndarray:
        prompt, full = self._texts(job)
        out = self.model.attribute(prompt, full, method=method, attributed_fn="bench_logprob",
                                   show_progress=False, **kw)
        a = out.sequence_attributions[0].target_attributions  # [src, tgt(, d)]
        a = a.float()
        if a.ndim == 3:
            a = a.sum(-1)
        return a[1 : job.n_prompt, : len(job.targets)].T.numpy()

    def ig(self, job: Job) -> np.ndarray:
        kw = {"internal_batch_size": job.ig_batch} if job.ig_batch else {}
        return self._run(job, "integrated_gradients", n_steps=job.n_steps, **kw)

    def ixg(self, job: Job) -> np.ndarray:
        return self._run(job, "input_x_gradient")

    def saliency(self, job: Job) -> np.ndarray:
        return self._run(job, "saliency")

    def occlusion(self, job: Job) -> np.ndarray:
        return self._run(job, "occlusion")


# ---------------------------------------------------------------------------------------- floor
class Floor:
    """Plain PyTorch on the Hugging Face model: the least work for the same numbers — interpolated
    token embeddings in step batches, the unembedding only at the read positions, one backward
    per target row."""

    name = "floor"

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager").eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _rows(self, job: Job) -> tuple[list[int], torch.Tensor]:
        n = job.n_prompt
        ids = job.ids + job.targets[:-1]
        pos = torch.arange(n - 1, n - 1 + len(job.targets))
        return ids, pos

    def _values(self, emb: torch.Tensor, pos: torch.Tensor, targets: list[int]) -> torch.Tensor:
        h = self.model.transformer(inputs_embeds=emb).last_hidden_state[:, pos]  # ln_f applied
        lp = self.model.lm_head(h).log_softmax(-1)
        return lp[:, torch.arange(len(targets)), torch.tensor(targets)]  # [b, rows]

    def ig(self, job: Job) -> np.ndarray:
        ids, pos = self._rows(job)
        wte = self.model.transformer.wte.weight
        x = wte[torch.tensor(ids)]
        b = wte[BASELINE_ID].expand_as(x).clone()
        b[0] = x[0]
        alpha, w = gauss_legendre(job.n_steps)
        R = len(job.targets)
        acc = torch.zeros(R, *x.shape)
        step = job.ig_batch or job.n_steps
        for s in range(0, job.n_steps, step):
            a = alpha[s : s + step, None, None]
            emb = (b + a * (x - b)).requires_grad_(True)
            with torch.enable_grad():
                v = self._values(emb, pos, job.targets)
                for r in range(R):
                    (g,) = torch.autograd.grad(v[:, r].sum(), emb, retain_graph=r < R - 1)
                    acc[r] += torch.einsum("spd,s->pd", g, w[s : s + step])
        return (acc * (x - b)).sum(-1)[:, 1 : job.n_prompt].numpy()

    def _grad_at_input(self, job: Job) -> tuple[torch.Tensor, torch.Tensor]:
        ids, pos = self._rows(job)
        x = self.model.transformer.wte.weight[torch.tensor(ids)][None].clone().requires_grad_(True)
        with torch.enable_grad():
            v = self._values(x, pos, job.targets)
            (g,) = torch.autograd.grad(v[:, 0].sum(), x)
        return x.detach()[0], g[0]

    def ixg(self, job: Job) -> np.ndarray:
        x, g = self._grad_at_input(job)
        return (x * g).sum(-1)[None, 1 : job.n_prompt].numpy()

    def saliency(self, job: Job) -> np.ndarray:
        _, g = self._grad_at_input(job)
        return g.abs().sum(-1)[None, 1 : job.n_prompt].numpy()

    def occlusion(self, job: Job) -> np.ndarray:
        # One batch: the input plus one copy per attributed position with that token replaced.
        ids = torch.tensor(job.ids)
        n = len(ids)
        batch = ids.repeat(n, 1)
        idx = torch.arange(1, n)
        batch[idx, idx] = BASELINE_ID
        with torch.no_grad():
            h = self.model.transformer(batch).last_hidden_state[:, -1]
            v = self.model.lm_head(h).log_softmax(-1)[:, job.targets[0]]
        return (v[0] - v[1:])[None].numpy()

    def forward(self, job: Job) -> None:
        with torch.no_grad():
            self.model(torch.tensor([job.ids]))


TOOLS: dict[str, Callable[[str], Any]] = {"mechattr": Mechattr, "captum": Captum, "inseq": Inseq, "floor": Floor}
