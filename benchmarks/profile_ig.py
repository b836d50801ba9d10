"""Where mechattr's IG time goes, piece by piece, against the same pieces on the plain HF model.

    python -m benchmarks.profile_ig [--steps 4] [--tokens 20] [--rounds 3]

Each round times (interleaved, medians reported):
  hf_fwd          HF GPT-2 forward, no grad, all logits           (what a peer pays per forward)
  tl_fwd          the TransformerBridge forward, no grad, all logits
  hf_fwdbwd       floor step: HF body forward with grad + logits at one position + backward
  tl_fwdbwd       the same as mechattr's grad_map runs it (plan.evaluate: the bridge's fast path,
                  mechattr.tl.fastpath, when no hook is attached) + backward
  bridge_fwdbwd   the same with the fast path off (adapter.run_until(final resid) through the
                  TransformerBridge + ln_final/unembed at one position) + backward
  values          mechattr's two no-grad target evaluations for completeness (f(x), f(baseline))
  ig_call         the whole ma.attribute(..., method="integrated_gradients") call
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .run import canary, model_dir, token_ids
from .tools import BASELINE_ID, Floor, Job


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import mechattr as ma
    from mechattr.api import resolve
    from mechattr.contract import Context

    mdir = model_dir()
    ids, cont = token_ids(mdir, a.tokens, 1)
    tl = ma.load_model(str(mdir))
    floor = Floor(str(mdir))
    hf = floor.model
    adapter, plan, _ = resolve(tl, torch.tensor(ids), cont[0])
    toks = torch.tensor([ids])
    S = a.steps
    x_hf = hf.transformer.wte.weight[toks[0]].detach()
    job = Job(ids, cont[:1], S)
    pos = len(ids) - 1

    def hf_fwd() -> None:
        with torch.no_grad():
            hf(toks.expand(S, -1))

    def tl_fwd() -> None:
        with torch.no_grad():
            tl(toks.expand(S, -1))

    def hf_fwdbwd() -> None:
        emb = x_hf.expand(S, -1, -1).clone().requires_grad_(True)
        v = floor._values(emb, torch.tensor([pos]), cont[:1])
        torch.autograd.grad(v.sum(), emb)

    x_tl = adapter.embed(toks)

    def bridge_fwdbwd() -> None:
        with adapter.guard():
            emb = x_tl.expand(S, -1, -1).clone().requires_grad_(True)
            lg = adapter.logits(toks.expand(S, -1), embed=emb, positions=[pos], _fast=False)
            v = lg.log_softmax(-1)[:, 0, cont[0]]
            torch.autograd.grad(v.sum(), emb)

    def tl_fwdbwd() -> None:
        with adapter.guard():
            emb = x_tl.expand(S, -1, -1).clone().requires_grad_(True)
            v = plan.evaluate(adapter, toks.expand(S, -1), emb)
            torch.autograd.grad(v.sum(), emb)

    def values() -> None:
        ctx = Context(adapter=adapter, plan=plan)
        with adapter.guard():
            ctx.values()
            ctx.values(torch.zeros_like(x_tl))

    def ig_call() -> None:
        ma.attribute(tl, toks[0], cont[0], method="integrated_gradients", n_steps=S, baseline=BASELINE_ID)

    def floor_ig() -> None:
        floor.ig(job)

    parts = {"hf_fwd": hf_fwd, "tl_fwd": tl_fwd, "hf_fwdbwd": hf_fwdbwd, "tl_fwdbwd": tl_fwdbwd,
             "bridge_fwdbwd": bridge_fwdbwd, "values": values, "ig_call": ig_call, "floor_ig": floor_ig}
    for f in parts.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in parts}
    cans = []
    for _ in range(a.rounds):
        cans.append(canary())
        for k, f in parts.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{S} steps x {a.tokens} tokens, canary median {statistics.median(cans):.3f}s")
    for k in parts:
        rel = statistics.median(times[k][i] / times["hf_fwdbwd"][i] for i in range(a.rounds))
        print(f"  {k:10s} {med[k]:8.3f}s   {rel:5.2f} x hf_fwdbwd")


if __name__ == "__main__":
    main()
