"""One IG step at length, mechattr vs a plain Hugging Face SDPA forward+backward, in one process.

    python -m benchmarks.bench_long_step                       # SmolLM2-135M, 2,048 tokens, 2 rounds
    python -m benchmarks.bench_long_step --tokens 8192 --tools mechattr --rounds 1   # does it run, peak memory

What one IG step is, for both sides: a batch of one interpolated token-embedding sequence (the
midpoint between the input and the id-0 baseline, BOS kept), a forward with gradients, the
log-probability of the next text token at the last position, and the gradient with respect to the
embeddings.

* ``mechattr``: exactly what ``methods._common.grad_map`` runs per batch:
  ``plan.evaluate(adapter, tokens, emb)`` under ``adapter.frozen_weights()`` on the model from
  ``ma.load_model`` (a TransformerBridge; the hook-free SDPA fast path, ``mechattr.tl.fastpath``,
  when it applies; ``MECHATTR_FAST_PATH=0`` to compare the bridge's own pass);
* ``hf_sdpa``: the same checkpoint loaded separately with
  ``AutoModelForCausalLM.from_pretrained(..., attn_implementation="sdpa")``; ``model.model``
  (the body) on ``inputs_embeds``, the LM head at the last position only, log-softmax, backward.

Both sides run interleaved in the same process (order alternating by round) after one warm-up
each on a short input; the times are medians of the rounds and the ratio is the median of the
per-round ratios.

Peak memory on CPU: resident set size (``/proc/self/statm``) sampled every 2 ms by a thread, peak
minus RSS just before the call. To make RSS fall back after each call (so the side measured second
is not hidden under the first side's high-water mark), the script runs with glibc's mmap
threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``, set by re-executing itself): every tensor
buffer is its own mapping and is returned to the OS when freed; ``malloc_trim(0)`` runs before each
call. tracemalloc is not used (it does not see torch's allocations). On CUDA,
``torch.cuda.max_memory_allocated`` minus the allocation before the call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.peak import _rss_mib, measure

ROOT = Path(__file__).resolve().parent.parent
MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tools", default="mechattr,hf_sdpa")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    if args.device == "cpu" and os.environ.get(MMAP_ENV) is None:  # see the module docstring
        env = {**os.environ, MMAP_ENV: "65536", "PYTHONPATH": str(ROOT)}
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.bench_long_step", *sys.argv[1:]], env)

    import torch
    from transformers import AutoModelForCausalLM

    import mechattr as ma
    from benchmarks.run import TEXT
    from mechattr.api import resolve

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    model = ma.load_model(args.model, device=args.device)
    adapter = ma.as_adapter(model)
    raw = adapter.tokenizer(TEXT * (1 + args.tokens // 40), add_special_tokens=False)["input_ids"]
    bos = [adapter.tokenizer.bos_token_id] if adapter.prepend_bos else []
    ids = torch.tensor(bos + raw[: args.tokens + 1 - len(bos)])
    if ids.numel() < args.tokens + 1:
        raise SystemExit(f"the text gives only {ids.numel()} tokens")
    prompt, target = ids[:-1], int(ids[-1])
    tools = args.tools.split(",")

    hf = None
    if {"hf_sdpa", "hf_sdpa_cache"} & set(tools):
        from mechattr.tl.smollm import checkpoint_dir

        mdir = checkpoint_dir() if args.model == "smollm2-135m" else Path(args.model)
        hf = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation="sdpa",
                                                  dtype=torch.float32).to(args.device).eval()
        for p in hf.parameters():
            p.requires_grad_(False)

    def point(n: int, emb_weight: torch.Tensor) -> torch.Tensor:
        x = emb_weight[prompt[:n].to(emb_weight.device)]
        b = emb_weight[0].expand_as(x).clone()
        b[0] = x[0]
        return (b + 0.5 * (x - b))[None].detach().clone()

    grads: dict[str, torch.Tensor] = {}

    def mech(n: int) -> Callable[[], None]:
        adapter_, plan, _ = resolve(model, prompt[:n], target)
        toks = prompt[:n][None].to(args.device)
        base = torch.zeros_like(toks)
        base[:, 0] = toks[:, 0]
        with torch.no_grad():
            x, b = adapter_.embed(toks), adapter_.embed(base)
        emb0 = (b + 0.5 * (x - b)).detach().clone()

        def run() -> None:
            emb = emb0.clone().requires_grad_(True)
            with adapter_.guard(), torch.enable_grad(), adapter_.frozen_weights():
                v = plan.evaluate(adapter_, toks, emb)
                (g,) = torch.autograd.grad(v[:, 0].sum(), emb)
            grads["mechattr"] = g.detach()

        return run

    def floor(n: int, use_cache: bool = False) -> Callable[[], None]:
        assert hf is not None
        emb0 = point(n, hf.get_input_embeddings().weight)
        body, head = hf.base_model, hf.get_output_embeddings()

        def run() -> None:
            e = emb0.clone().requires_grad_(True)
            with torch.enable_grad():
                h = body(inputs_embeds=e, use_cache=use_cache).last_hidden_state[:, -1]
                v = head(h).log_softmax(-1)[:, target].sum()
                (g,) = torch.autograd.grad(v, e)
            grads["hf_sdpa" if not use_cache else "hf_sdpa_cache"] = g.detach()

        return run

    make = {"mechattr": mech, "hf_sdpa": floor, "hf_sdpa_cache": lambda n: floor(n, use_cache=True)}
    for t in tools:  # warm-up on a short input
        make[t](64)()
    runs = {t: make[t](args.tokens) for t in tools}
    times: dict[str, list[float]] = {t: [] for t in tools}
    mems: dict[str, list[float]] = {t: [] for t in tools}
    for r in range(args.rounds):
        order = tools if r % 2 == 0 else tools[::-1]
        for t in order:
            s, m = measure(runs[t], args.device)
            times[t].append(s)
            mems[t].append(m)
            print(f"round {r} {t}: {s:.2f} s, peak extra {m:.0f} MiB", flush=True)
    load1 = os.getloadavg()
    fast = None
    if "mechattr" in tools:
        fp = adapter.fast_path()
        fast = "off" if fp is None else ("sdpa" if getattr(fp, "sdpa", False) else "eager")
    out: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="minutes"), "model": args.model,
        "tokens": args.tokens, "rounds": args.rounds, "threads": torch.get_num_threads(), "device": args.device,
        "fast_path": os.environ.get("MECHATTR_FAST_PATH", "1"),
        "memory_method": ("torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else
                          f"peak RSS (2 ms sampling) minus RSS before, {MMAP_ENV}=65536, malloc_trim"),
        "seconds": times, "extra_mib": mems, "load_avg_1min_before_after": [load0[0], load1[0]],
        "median_s": {t: statistics.median(v) for t, v in times.items()},
        "median_extra_mib": {t: statistics.median(v) for t, v in mems.items()},
        "rss_mib_end": _rss_mib(),
    }
    out["mechattr_fast_path"] = fast
    if set(tools) >= {"mechattr", "hf_sdpa"}:
        out["time_ratio"] = statistics.median(a / b for a, b in zip(times["mechattr"], times["hf_sdpa"]))
        out["memory_ratio"] = statistics.median(a / b for a, b in zip(mems["mechattr"], mems["hf_sdpa"]))
        g1, g2 = grads["mechattr"].float().cpu(), grads["hf_sdpa"].float().cpu()
        out["max_abs_grad_diff"] = float((g1 - g2).abs().max())
        out["max_abs_grad"] = float(g2.abs().max())
    print("RESULT " + json.dumps(out), flush=True)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
