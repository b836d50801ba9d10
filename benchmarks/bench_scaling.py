"""Time and peak memory of integrated gradients against input length, per tool, with a figure.

    python -m benchmarks.bench_scaling                                   # GPT-2-small shape, 64 ... 2048 tokens
    python -m benchmarks.bench_scaling --model smollm2-135m --lengths 64,128,256,512,1024,2048
    python -m benchmarks.bench_scaling --lengths 64,128 --steps 2 --device cuda

One IG call of ``--steps`` Gauss-Legendre steps, one step per forward + backward (batch 1, so the
per-step cost is what grows with length), target = log-prob of the next text token, baseline =
token id 0 with BOS kept. Tools:

* ``mechattr``: ``ma.attribute(..., method="integrated_gradients", batch_size=1)`` on a
  TransformerBridge (hook-free passes on the SDPA fast path);
* ``floor``: the same IG written by hand on the plain Hugging Face model with PyTorch's
  scaled-dot-product attention (``attn_implementation="sdpa"``), the least work for the numbers;
* ``floor_eager``: the same with eager attention (what the bridge's own model was loaded with);
* ``captum`` / ``inseq``: the runners of :mod:`benchmarks.tools` (GPT-2-shaped models only; they
  load the model with eager attention, as their own docs do). A peer that is not installed, or
  does not apply to the model, is skipped and the reason is printed and kept in the JSON.

Each (tool, length) runs in its own child process: on CPU the child samples its resident memory
every 2 ms (peak RSS minus RSS before the call); on CUDA it reads
``torch.cuda.max_memory_allocated`` (minus the allocation before the call). Time is per IG step
(the call's wall time over ``--steps``; the completeness evaluations are inside). Results go to
``--json`` and the figure to ``--figure`` (time and memory against length, log-log).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ("mechattr", "floor", "floor_eager", "captum", "inseq")


def model_dir(name: str) -> Path:
    if name == "gpt2-small-shape":
        # The same shape as benchmarks.run's model, with 2,048 positions (GPT-2's own 1,024 would
        # stop the scaling at 1,024 tokens); random init, seed 0.
        from mechattr.tl.loading import atomic_dir, cache_dir, make_gpt2_dir

        return atomic_dir(
            cache_dir() / "bench" / "gpt2-small-random-2k-v1",
            lambda p: make_gpt2_dir(p, n_layer=12, n_head=12, n_embd=768, n_positions=2048, seed=0),
        )
    if name == "smollm2-135m":
        from mechattr.tl.smollm import checkpoint_dir

        return checkpoint_dir()
    return Path(name)


def prompt(mdir: Path, n: int) -> list[int]:
    from transformers import AutoTokenizer

    from benchmarks.run import TEXT

    tok = AutoTokenizer.from_pretrained(mdir)
    ids = tok(TEXT * (1 + n // 40), add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    ids = ([bos] if bos is not None else []) + ids
    return ids[: n + 1]  # n prompt tokens and the next one as the target


class HFFloor:
    """IG by hand on the plain Hugging Face model (any causal LM): batch-1 steps."""

    def __init__(self, mdir: Path, attn: str, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(mdir, attn_implementation=attn).to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device

    def ig(self, ids: list[int], target: int, steps: int) -> None:
        import numpy as np

        torch = self.torch
        emb = self.model.get_input_embeddings().weight
        x = emb[torch.tensor(ids, device=self.device)]
        b = emb[0].expand_as(x).clone()
        b[0] = x[0]
        a, w = np.polynomial.legendre.leggauss(steps)
        acc = torch.zeros_like(x)
        base, head = self.model.base_model, self.model.get_output_embeddings()
        for s in range(steps):
            e = (b + float(0.5 * (a[s] + 1)) * (x - b))[None].requires_grad_(True)
            with torch.enable_grad():
                h = base(inputs_embeds=e, use_cache=False).last_hidden_state[:, -1]
                v = head(h).log_softmax(-1)[:, target].sum()
                (g,) = torch.autograd.grad(v, e)
            acc += float(0.5 * w[s]) * g[0]
        _ = ((x - b) * acc).sum(-1).cpu()


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    mdir = model_dir(args.model)
    ids = prompt(mdir, args.length)
    if len(ids) < args.length + 1:
        raise SystemExit(f"the text gives only {len(ids)} tokens")
    p_ids, target = ids[:-1], ids[-1]
    cuda = args.device.startswith("cuda")

    if args.tool == "mechattr":
        import mechattr as ma

        model = ma.load_model(str(mdir), kind="bridge", device=args.device)

        def run(pi: list[int], steps: int) -> None:
            ma.attribute(model, torch.tensor(pi), target, method="integrated_gradients", n_steps=steps,
                         rule="gausslegendre", baseline=0, batch_size=1, quiet=True)
    elif args.tool in ("floor", "floor_eager"):
        fl = HFFloor(mdir, "sdpa" if args.tool == "floor" else "eager", args.device)

        def run(pi: list[int], steps: int) -> None:
            fl.ig(pi, target, steps)
    else:
        from benchmarks import tools as T

        if args.model != "gpt2-small-shape":
            raise SystemExit(f"SKIP {args.tool}: its runner in benchmarks/tools.py is written for the GPT-2-shaped model")
        import importlib.util

        if importlib.util.find_spec(args.tool) is None:
            raise SystemExit(f"SKIP {args.tool}: not installed in this environment ({sys.executable})")
        t = T.TOOLS[args.tool](str(mdir))

        def run(pi: list[int], steps: int) -> None:
            t.ig(T.Job(pi, [target], steps, ig_batch=1))

    run(p_ids[:8], 2)  # warm-up: imports and one-off allocations do not count
    from benchmarks.peak import measure

    secs, extra = measure(lambda: run(p_ids, args.steps), args.device)
    print("RESULT " + json.dumps({"tool": args.tool, "length": args.length, "s_per_step": secs / args.steps,
                                  "seconds": secs, "extra_mib": extra, "memory": "cuda_max_allocated" if cuda else "rss"}),
          flush=True)


def run_child(args: argparse.Namespace, tool: str, n: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_scaling", "--child", "--tool", tool, "--length", str(n),
           "--model", args.model, "--steps", str(args.steps), "--threads", str(args.threads), "--device", args.device]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "length": n, "error": f"over {args.timeout} s"}
    out = p.stdout + p.stderr
    skip = [ln for ln in out.splitlines() if ln.startswith("SKIP ")]
    if skip:
        return {"tool": tool, "length": n, "skipped": skip[0][5:]}
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        tail = out.strip().splitlines()[-1:] if out.strip() else [str(p.returncode)]
        return {"tool": tool, "length": n, "error": tail[0][:300]}
    return json.loads(line[0][7:])


def plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for tool in TOOLS:
        rs = sorted((r for r in results if r["tool"] == tool and "s_per_step" in r), key=lambda r: r["length"])
        if not rs:
            continue
        L = [r["length"] for r in rs]
        axes[0].plot(L, [r["s_per_step"] for r in rs], marker="o", label=tool)
        axes[1].plot(L, [max(r["extra_mib"], 0.1) for r in rs], marker="o", label=tool)
    for ax, lab in zip(axes, ("seconds per IG step", "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input length (tokens)")
        ax.set_ylabel(lab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(json_path: Path, figure: str | None = None) -> str:
    """A results table (seconds per step and peak extra MiB per tool and length) from a saved run,
    with its conditions, the skipped tools and the figure (``figure``: its path as the page links it)."""
    meta = json.loads(Path(json_path).read_text())
    res = meta["results"]
    lengths = sorted({r["length"] for r in res})
    tools = [t for t in TOOLS if any(r["tool"] == t for r in res)]
    L = [f"Conditions: {meta['conditions']}. Command: `python -m benchmarks.bench_scaling {' '.join(meta['argv'])}`.", ""]
    if figure:
        L += [f"![time and memory against length]({figure})", ""]
    L += ["| tool | " + " | ".join(f"{n} tokens" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for t in tools:
        cells = []
        for n in lengths:
            r = next((r for r in res if r["tool"] == t and r["length"] == n), None)
            if r is None:
                cells.append("–")
            elif "s_per_step" in r:
                cells.append(f"{r['s_per_step']:.2f} s, {r['extra_mib']:.0f} MiB")
            elif "skipped" in r:
                cells.append("skipped")
            else:
                cells.append("failed")
        L.append(f"| {t} | " + " | ".join(cells) + " |")
    why = sorted({f"{r['tool']}: {r.get('skipped') or r.get('error')}" for r in res if "s_per_step" not in r})
    if why:
        L += ["", "Not measured: " + "; ".join(why) + "."]
    # growth between the two longest lengths measured, per tool (2x the length: linear = 2x, quadratic = 4x)
    growth = []
    for t in tools:
        rs = sorted((r for r in res if r["tool"] == t and "s_per_step" in r), key=lambda r: r["length"])
        if len(rs) >= 2 and rs[-2]["extra_mib"] > 0:
            a, b = rs[-2], rs[-1]
            growth.append(f"{t} {b['extra_mib'] / a['extra_mib']:.2f}x memory, {b['s_per_step'] / a['s_per_step']:.2f}x time "
                          f"({a['length']} → {b['length']})")
    if growth:
        L += ["", "Growth over the last doubling of the length: " + "; ".join(growth) + "."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-small-shape", help="gpt2-small-shape, smollm2-135m or a local HF dir")
    ap.add_argument("--lengths", default="64,128,256,512,1024,2048")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--steps", type=int, default=4, help="IG steps per call (one per forward + backward)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per child")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--figure", default=None, help="write the figure here (PNG)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tool", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return
    import platform

    load0 = os.getloadavg()
    results = []
    for n in (int(x) for x in args.lengths.split(",")):
        for tool in args.tools.split(","):
            r = run_child(args, tool, n)
            results.append(r)
            print(json.dumps(r), flush=True)
    load1 = os.getloadavg()
    cond = (f"{args.model}, IG {args.steps} steps (1 per fwd+bwd), device {args.device}, {args.threads} thread(s), "
            f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, load avg (5 min) "
            f"{load0[1]:.1f} -> {load1[1]:.1f}")
    print(cond)
    meta = {"conditions": cond, "argv": sys.argv[1:] if argv is None else argv, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    if args.figure:
        plot(results, Path(args.figure), cond)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
