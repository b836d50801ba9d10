"""All-edge attribution patching: mechattr's ``eap`` against TransformerLens 4.3's
``attribution_patch(granularity="edge")`` on the same random GPT-2-shaped model and pairs,
side by side in one process; and ``eap_ig_inputs`` with m steps against ``eap``.

Time: wall-clock seconds of the call (median of ``--repeat`` rounds; the runs take turns in each
round). Peak memory (``--memory`` only): the process's peak resident set size during the call
(Linux VmHWM, reset before each call through /proc/self/clear_refs), minus the resident size
before it, each run in a fresh process.

    python benchmarks/bench_circuits.py [--layers 12] [--heads 12] [--d-model 768] [--pairs 8]
                                        [--steps 5] [--repeat 3]

GPT-2 small is the default shape; on a shared 2-core machine run a small one, e.g.
``--layers 2 --heads 4 --d-model 128 --pairs 2``.

    python benchmarks/bench_circuits.py --memory [shape options]

Peak memory of each run in a fresh process of its own (model built, one warm-up forward, then the
run once): in one process an allocator that keeps freed memory makes a run's peak depend on what
ran before it.

    python benchmarks/bench_circuits.py --smollm2 [--pairs 8] [--repeat 3]

SmolLM2-135M instead: all-edge ``eap`` on IOI pairs of one token length against one forward +
backward pass of the plain model on the same batch (the pairs' corrupt prompts stacked, gradient of
the summed logit differences with respect to the token embeddings), both in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

# this checkout's mechattr, not an installed copy (the script's own folder is first on sys.path)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_one(fn: Callable[[], Any]) -> tuple[float, float]:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    before = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0, _rss_mb("VmHWM") - before


def measure_all(runs: dict[str, Callable[[], Any]], repeat: int) -> dict[str, tuple[float, float]]:
    """Median seconds and largest peak of each run; the runs take turns round by round, so a
    change in the machine's load falls on all of them alike."""
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    for _ in range(repeat):
        for k, fn in runs.items():
            got[k].append(measure_one(fn))
    return {k: (statistics.median(t for t, _ in v), max(m for _, m in v)) for k, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M: eap against forward + backward passes")
    ap.add_argument("--memory", action="store_true",
                    help="peak memory of each run in a fresh process of its own (an allocator that keeps "
                         "freed memory makes in-process peaks depend on what ran before)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"load average before: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if args.smollm2:
        return smollm2(args)

    import mechattr as ma
    from mechattr.tl.loading import _from_local_dir, make_gpt2_dir
    from transformer_lens.tools.analysis import attribution_patching as ap_tl

    with tempfile.TemporaryDirectory() as d:
        make_gpt2_dir(Path(d), n_layer=args.layers, n_head=args.heads, n_embd=args.d_model, n_positions=128)
        model = _from_local_dir(Path(d), "bridge", "cpu", torch.float32)
    model.eval()
    a = ma.as_adapter(model)
    # TL stacks pairs in one tensor: keep IOI pairs of one token length (the most common one)
    cand = ma.circuits.tasks.ioi(model, n=8 * args.pairs)
    lens = [a.tokenize(p.clean).shape[1] for p in cand]
    common = max(set(lens), key=lens.count)
    keep = [p for p, n in zip(cand, lens) if n == common][: args.pairs]
    clean = torch.cat([a.tokenize(p.clean) for p in keep])
    corrupt = torch.cat([a.tokenize(p.corrupt) for p in keep])
    t, f = a.single_token(keep[0].target), a.single_token(keep[0].contrast)
    # one metric for all pairs (TL takes one metric function): the first pair's logit difference
    metric = lambda logits: logits[0, -1, t] - logits[0, -1, f]  # noqa: E731
    cl_txt, co_txt = [p.clean for p in keep], [p.corrupt for p in keep]
    target, contrast = keep[0].target, keep[0].contrast
    print(f"model: random GPT-2 {args.layers} layers x {args.heads} heads, d_model {args.d_model}; "
          f"{len(keep)} pairs of {clean.shape[1]} tokens; torch threads {torch.get_num_threads()}")

    with torch.no_grad():
        model(clean[:1])  # warm up (a bridge wires its hooks on the first forward)
    runs = {
        "mechattr eap (default 4 pairs per pass)": lambda: ma.circuits.edge_attribution(model, cl_txt, co_txt, target, contrast=contrast,
                                                             method="eap", keep_patterns=False),
        "mechattr eap, one pair per pass": lambda: ma.circuits.edge_attribution(
            model, cl_txt, co_txt, target, contrast=contrast, method="eap", batch_size=1, keep_patterns=False),
        "mechattr eap, 8 pairs per pass": lambda: ma.circuits.edge_attribution(
            model, cl_txt, co_txt, target, contrast=contrast, method="eap", batch_size=8, keep_patterns=False),
        "TL 4.3 attribution_patch(edge)": lambda: ap_tl.attribution_patch(
            model, clean, corrupt, metric, ap_tl.EdgeAttributionConfig(granularity="edge")),
        f"mechattr eap_ig_inputs m={args.steps}": lambda: ma.circuits.edge_attribution(
            model, cl_txt, co_txt, target, contrast=contrast, method="eap_ig_inputs", ig_steps=args.steps,
            batch_size=args.steps, keep_patterns=False),
    }
    if args.only is not None:
        sec, mb = measure_one(runs[args.only])
        print(f"ONLY {sec:.3f} {mb:.1f}")
        return
    if args.memory:
        import subprocess

        base = [sys.executable, str(Path(__file__).resolve()), "--layers", str(args.layers), "--heads", str(args.heads),
                "--d-model", str(args.d_model), "--pairs", str(args.pairs), "--steps", str(args.steps)]
        peak = {}
        for k in runs:
            out = subprocess.run(base + ["--only", k], capture_output=True, text=True, check=True).stdout
            sec, mb = next(line.split()[1:] for line in out.splitlines() if line.startswith("ONLY "))
            peak[k] = float(mb)
            print(f"{k:42s} fresh process: {float(sec):8.3f} s   peak +{float(mb):8.1f} MB")
        tl_mb = peak["TL 4.3 attribution_patch(edge)"]
        for k, mb in peak.items():
            if k.startswith("mechattr eap"):
                print(f"{k} / TL: peak memory {mb / max(tl_mb, 1e-9):.2f}x")
        print(f"load average after: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")
        return
    res = measure_all(runs, args.repeat)
    # in one process the allocator keeps freed memory, so only times are compared here (--memory)
    for k, (s, _) in res.items():
        print(f"{k:42s} {s:8.3f} s")
    e, tl = res["mechattr eap (default 4 pairs per pass)"], res["TL 4.3 attribution_patch(edge)"]
    ig = res[f"mechattr eap_ig_inputs m={args.steps}"]
    print(f"eap / TL: time {e[0] / tl[0]:.2f}x (peak memory: run with --memory)")
    e1 = res["mechattr eap, one pair per pass"]
    print(f"eap one pair per pass / TL: time {e1[0] / tl[0]:.2f}x")
    print(f"eap_ig_inputs m={args.steps} / eap: time {ig[0] / e[0]:.2f}x (target <= {args.steps + 1})")
    print(f"load average after: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")


def same_length_ioi(model: Any, n: int) -> list[Any]:
    import mechattr as ma

    a = ma.as_adapter(model)
    cand = ma.circuits.tasks.ioi(model, n=8 * n)
    lens = [a.tokenize(p.clean).shape[1] for p in cand]
    common = max(set(lens), key=lens.count)
    return [p for p, k in zip(cand, lens) if k == common][:n]


def smollm2(args: Any) -> None:
    import mechattr as ma

    model = ma.load_model("smollm2-135m")
    a = ma.as_adapter(model)
    pairs = same_length_ioi(model, args.pairs)
    corrupt = torch.cat([a.tokenize(p.corrupt) for p in pairs])
    tg = torch.tensor([a.single_token(p.target) for p in pairs])
    ct = torch.tensor([a.single_token(p.contrast) for p in pairs])
    rows = torch.arange(len(pairs))
    print(f"model: SmolLM2-135M; {len(pairs)} IOI pairs of {corrupt.shape[1]} tokens; torch threads {torch.get_num_threads()}")

    from mechattr.tl.hooks import EMBED

    def fwd_bwd() -> None:
        emb = a.embed(corrupt).detach().requires_grad_(True)
        with a.hooks(fwd_hooks=[(EMBED, lambda x, hook: emb)]):
            logits = model(corrupt)
        # the gradient at the input only, as eap's backward (no weight gradients left behind)
        torch.autograd.grad((logits[rows, -1, tg] - logits[rows, -1, ct]).sum(), emb)

    with torch.no_grad():
        model(corrupt[:1])
    runs = {
        "forward+backward, batch of the pairs": fwd_bwd,
        "mechattr eap (default 4 pairs per pass)": lambda: ma.circuits.edge_attribution(model, pairs, method="eap", keep_patterns=False),
        "mechattr eap, one pair per pass": lambda: ma.circuits.edge_attribution(model, pairs, method="eap", batch_size=1,
                                                                               keep_patterns=False),
        "mechattr eap, 8 pairs per pass": lambda: ma.circuits.edge_attribution(model, pairs, method="eap", batch_size=8,
                                                                              keep_patterns=False),
    }
    res = measure_all(runs, args.repeat)
    for k, (sec, mb) in res.items():
        print(f"{k:40s} {sec:8.3f} s   peak +{mb:8.1f} MB")
    e, fb = res["mechattr eap (default 4 pairs per pass)"], res["forward+backward, batch of the pairs"]
    print(f"eap / (forward+backward): {e[0] / fb[0]:.2f} passes' worth (target <= 3)")
    e1 = res["mechattr eap, one pair per pass"]
    print(f"eap one pair per pass / (forward+backward): {e1[0] / fb[0]:.2f} passes' worth")
    print(f"load average after: {' / '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
