"""mechattr side by side with Captum, Inseq and a plain-PyTorch floor on a GPT-2-small-shaped model.

    python -m benchmarks.run --quick          # a few minutes on a laptop CPU
    python -m benchmarks.run                  # the issue's sizes (50 IG steps, 320-token prompt)

Rounds interleave the tools (A B C D A B C D ...) after one warm-up call each; every round also
times a fixed matmul (the canary) so a stalled machine shows up as a slow canary, not as a slow
tool. Reported: median seconds per tool, the median over rounds of mechattr / best peer and
mechattr / floor (ratios of the same round cancel most of the machine's noise), the largest
difference between the tools' scores, and the peak memory of each tool in its own subprocess.
The report is printed and written to docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pickle
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .peak import sample_rss
from .tools import BOS, TOOLS, Job

ROOT = Path(__file__).resolve().parent.parent
PEERS = ("captum", "inseq")

TEXT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the lamp. "
    "Ships passing the rocky coast depended on its beam, and the village below slept easier "
    "knowing that the light would burn until morning. One winter a storm broke the great lens, "
    "and the keeper had to decide whether to wait for help from the city or repair it himself "
    "with the tools he had. He chose to work through the night, and when the sun rose the light "
    "was shining again over the grey water. "
)


@dataclass
class Settings:
    n_steps: int
    prompt: int
    cont: int
    long: int
    rounds: int


QUICK = Settings(n_steps=4, prompt=20, cont=3, long=48, rounds=3)
FULL = Settings(n_steps=50, prompt=20, cont=10, long=320, rounds=3)


@dataclass
class Case:
    key: str
    label: str
    method: str  # tool method name
    job: Job
    tools: tuple[str, ...]
    target: str  # the issue's target, as text
    peer_target: float | None = None  # mechattr / best peer must be <= this
    floor_target: float | None = None  # mechattr / floor must be <= this
    times: dict[str, list[float]] = field(default_factory=dict)
    canary: list[float] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ model, text
def model_dir() -> Path:
    from mechattr.tl.loading import atomic_dir, cache_dir, make_gpt2_dir

    return atomic_dir(
        cache_dir() / "bench" / "gpt2-small-random-v1",
        lambda p: make_gpt2_dir(p, n_layer=12, n_head=12, n_embd=768, seed=0),
    )


def token_ids(mdir: Path, n_prompt: int, n_cont: int) -> tuple[list[int], list[int]]:
    """BOS + (n_prompt - 1) text tokens and the next n_cont tokens, chosen so that decoding and
    re-encoding gives the same ids (every tool tokenises text itself)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mdir)
    text = TEXT * (1 + (n_prompt + n_cont) // 60)
    ids = tok(text)["input_ids"]
    for start in range(0, 40):
        p = [BOS] + ids[start : start + n_prompt - 1]
        c = ids[start + n_prompt - 1 : start + n_prompt - 1 + n_cont]
        if tok(tok.decode(p + c))["input_ids"] == p + c and tok(tok.decode(p))["input_ids"] == p:
            return p, c
    raise RuntimeError("No prompt slice survives a decode/encode round trip.")


def make_cases(mdir: Path, s: Settings, only: set[str] | None) -> list[Case]:
    p20, c = token_ids(mdir, s.prompt, s.cont)
    pl, cl = token_ids(mdir, s.long, 1)
    all4 = ("mechattr", "captum", "inseq", "floor")
    # The long case runs every tool in step chunks of the size mechattr picks under its default
    # 2 GiB cap, so peak memory compares like with like (Captum/Inseq otherwise take all at once).
    long_batch = _mechattr_batch(s.long)
    cases = [
        Case("ig", f"IG, {s.n_steps} steps, {s.prompt}-token prompt, 1 target", "ig",
             Job(p20, c[:1], s.n_steps), all4, "≤ 0.7 × best peer", 0.7, 1.25),
        Case("ig_cont", f"IG, {s.n_steps} steps, {s.prompt}-token prompt, forced continuation of {s.cont}",
             "ig", Job(p20, c, s.n_steps), all4, "≤ 0.5 × best peer", 0.5, 1.25),
        Case("ig_long", f"IG, {s.n_steps} steps, {s.long}-token prompt, 1 target (step chunk {long_batch})",
             "ig", Job(pl, cl, s.n_steps, ig_batch=long_batch), all4, "≤ 0.7 × best peer, memory ≤ peers", 0.7, 1.25),
        Case("occlusion", f"occlusion, {s.prompt} tokens", "occlusion", Job(p20, c[:1]), all4,
             "≤ 0.2 × best peer", 0.2, None),
        Case("occlusion_long", f"occlusion, {s.long} tokens", "occlusion", Job(pl, cl[:1]), all4,
             "≤ 0.1 × best peer", 0.1, None),
        Case("ixg", f"input × gradient, {s.prompt} tokens", "ixg", Job(p20, c[:1]), all4, "≤ 1.0 × best peer", 1.0, 1.25),
        Case("saliency", f"saliency, {s.prompt} tokens", "saliency", Job(p20, c[:1]), ("mechattr", "inseq", "floor"),
             "≤ 1.0 × best peer", 1.0, 1.25),
        Case("rollout", f"attention rollout, all layers, {s.prompt} tokens (vs one plain forward)", "rollout",
             Job(p20, c[:1]), ("mechattr", "forward_tl", "forward_hf"), "≤ 1.5 × one plain forward", None, None),
    ]
    return [c for c in cases if only is None or c.key in only]


LONG_CASES = ("ig_cont", "ig_long", "occlusion_long")


def _mechattr_batch(n_tokens: int) -> int:
    """The step batch mechattr's Context picks for this prompt length under its default cap."""
    from mechattr.contract import Context

    class _A:  # only the two size estimates are read
        def activation_bytes_per_token(self) -> int:
            return (14 * 768 + 3 * 3072) * 12 * 4

        def attention_bytes_per_token(self, n: int, hook_free: bool = False) -> int:
            # the bridge's fast path runs SDPA for hook-free passes (ModelAdapter's estimate)
            return 2 * 12 * 12 * 4 if hook_free else 3 * 12 * n * 12 * 4

    class _P:
        tokens = torch.zeros(1, n_tokens, dtype=torch.long)

    return Context(adapter=_A(), plan=_P()).max_batch()  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- timing
def canary() -> float:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 512, generator=g)
    t0 = time.perf_counter()
    for _ in range(20):
        a = (a @ a).tanh_()
    return time.perf_counter() - t0


def call(tools: dict[str, Any], name: str, case: Case) -> Any:
    if name == "forward_tl":
        return tools["mechattr"].forward(case.job)
    if name == "forward_hf":
        return tools["floor"].forward(case.job)
    return getattr(tools[name], case.method)(case.job)


def run_case(case: Case, tools: dict[str, Any], rounds: int, log: Any, warmup: bool = True) -> None:
    """``warmup=False`` (long cases on a busy machine): the first call of each tool is timed as
    round 1 (it also keeps the scores), so each tool runs ``rounds`` times in all."""
    active = [t for t in case.tools if (t.startswith("forward") or t in tools)]
    if not warmup:
        case.canary.append(canary())
    for name in active:  # warm-up; keeps the scores for the agreement check
        try:
            t0 = time.perf_counter()
            out = call(tools, name, case)
            if not warmup:
                case.times.setdefault(name, []).append(time.perf_counter() - t0)
            if out is not None:
                case.outputs[name] = np.asarray(out)
        except Exception as e:  # a peer that cannot do the case is reported, not fatal
            case.errors[name] = f"{type(e).__name__}: {e}"[:300]
            log(f"  {name} failed: {case.errors[name]}")
    if not warmup:
        log("  round 1 (no warm-up): " + "  ".join(f"{n} {case.times[n][-1]:.3f}s" for n in active if n in case.times))
        rounds -= 1
    active = [t for t in active if t not in case.errors]
    for r in range(rounds):
        case.canary.append(canary())
        for name in active:
            t0 = time.perf_counter()
            call(tools, name, case)
            case.times.setdefault(name, []).append(time.perf_counter() - t0)
        log(f"  round {r + 1}: canary {case.canary[-1]:.3f}s  " +
            "  ".join(f"{n} {case.times[n][-1]:.3f}s" for n in active))


def ratios(case: Case) -> dict[str, float]:
    """Median over rounds of per-round ratios."""
    t = case.times
    out: dict[str, float] = {}
    if "mechattr" not in t:
        return out
    n = len(t["mechattr"])
    peers = [p for p in PEERS if p in t]
    if peers:
        out["peer"] = statistics.median(t["mechattr"][i] / min(t[p][i] for p in peers) for i in range(n))
        out["best_peer"] = min(peers, key=lambda p: statistics.median(t[p]))
    if "floor" in t:
        out["floor"] = statistics.median(t["mechattr"][i] / t["floor"][i] for i in range(n))
    if "forward_tl" in t:
        out["forward_tl"] = statistics.median(t["mechattr"][i] / t["forward_tl"][i] for i in range(n))
        out["forward_hf"] = statistics.median(t["mechattr"][i] / t["forward_hf"][i] for i in range(n))
    return out


def agreement(case: Case) -> dict[str, float]:
    """Max |score - floor score| per tool (over the prompt tokens, all target rows)."""
    ref = case.outputs.get("floor")
    if ref is None:
        ref = case.outputs.get("mechattr")
    out = {}
    for name, o in case.outputs.items():
        if ref is None or name == "floor" or o.shape != ref.shape:
            continue
        out[name] = float(np.abs(o - ref).max())
    out["scale"] = float(np.abs(ref).max()) if ref is not None else float("nan")
    return out


# ------------------------------------------------------------------------------- memory (child)
def child(tool: str, case_key: str, quick: bool, threads: int) -> None:
    """Load one tool, run one case once with an RSS sampler; print JSON."""
    torch.set_num_threads(threads)
    mdir = model_dir()
    case = next(c for c in make_cases(mdir, QUICK if quick else FULL, {case_key}))
    t = TOOLS[tool](str(mdir))
    try:  # warm the code paths on a tiny input so one-off imports do not count as the call's memory
        getattr(t, case.method)(Job(case.job.ids[:8], case.job.targets, 2))
    except RuntimeError:
        pass
    secs, before, peak_mb = sample_rss(lambda: getattr(t, case.method)(case.job))
    print("RESULT " + json.dumps({"before_mb": before, "peak_mb": peak_mb, "extra_mb": peak_mb - before,
                                  "seconds": secs}))


def measure_memory(case: Case, quick: bool, threads: int, log: Any) -> None:
    for tool in case.tools:
        cmd = [sys.executable, "-m", "benchmarks.run", "--child", tool, "--case", case.key,
               "--threads", str(threads)] + (["--quick"] if quick else [])
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            case.memory[tool] = {"error": 1.0}
            log(f"  memory {tool}: failed ({p.stderr.strip().splitlines()[-1:] if p.stderr else p.returncode})")
            continue
        case.memory[tool] = json.loads(line[0][7:])
        log(f"  memory {tool}: +{case.memory[tool]['extra_mb']:.0f} MiB over the loaded model "
            f"(peak RSS {case.memory[tool]['peak_mb']:.0f} MiB)")


# ---------------------------------------------------------------------------------------- report
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "transformers", "transformer-lens", "captum", "inseq", "mechattr"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for ln in open("/proc/cpuinfo"):
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln for ln in open("/proc/meminfo") if ln.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores{mem}, torch threads {torch.get_num_threads()}, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}")


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def report(cases: list[Case], s: Settings, quick: bool, flow: str | None, notes: list[str],
           date: str | None = None, machine_desc: str | None = None) -> str:
    L = []
    L.append("# Performance\n")
    L.append("Written by `python -m benchmarks.run" + (" --quick" if quick else "") + "` — do not edit by hand; "
             "rerun the benchmark instead.\n")
    L.append(f"- Date: {date or datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}")
    L.append(f"- Machine: {machine_desc or machine()}")
    L.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    L.append(f"- Settings: {'--quick' if quick else 'full'}: {s.n_steps} IG steps, {s.prompt}-token prompt "
             f"(BOS included), continuation of {s.cont} tokens, long prompt {s.long} tokens, "
             f"{s.rounds} interleaved rounds after one warm-up call per tool")
    L.append("- Model: GPT-2-small shape (12 layers, 12 heads, d_model 768, vocab 50,257), random init, "
             "eager attention, real GPT-2 BPE tokenizer, saved as a local Hugging Face directory; mechattr runs "
             "it as a TransformerLens model (`ma.load_model(dir)`), Captum and the floor on the Hugging Face "
             "model, Inseq loads its own copy (`inseq.load_model(dir, ...)`).")
    L.append("- Same computation everywhere: target = log-prob of the forced token(s); baseline = token id 0 "
             "at every attributed position with BOS kept (Captum's `TextTokenInput` default `baselines=0`; "
             "Inseq's unknown-token baseline is pointed at id 0); Gauss-Legendre steps; the token embedding "
             "(`wte` / `hook_embed`) is interpolated, positions fixed.")
    L.append("- Floor: plain PyTorch on the Hugging Face model — interpolated embeddings in step batches, "
             "the unembedding only at the read position(s), one backward per target row.\n")
    L.append("Times are medians over rounds (seconds). Ratios are medians of per-round ratios: "
             "mechattr / fastest peer in that round, and mechattr / floor. ✓ = the issue's target is met.\n")
    L.append("| case | mechattr | Captum | Inseq | floor | ÷ best peer | ÷ floor | target | canary (s) |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for c in cases:
        med = {k: statistics.median(v) for k, v in c.times.items()}
        r = ratios(c)
        can = fmt(statistics.median(c.canary), ".3f") if c.canary else "–"
        if c.key == "rollout":
            ok = r.get("forward_tl") is not None and r["forward_tl"] <= 1.5
            L.append(f"| {c.label} | {fmt(med.get('mechattr'), '.3f')} | forward (TL) {fmt(med.get('forward_tl'), '.3f')} "
                     f"| forward (HF) {fmt(med.get('forward_hf'), '.3f')} | – | ÷ TL forward {fmt(r.get('forward_tl'))} "
                     f"| ÷ HF forward {fmt(r.get('forward_hf'))} | {c.target} {'✓' if ok else '✗'} | {can} |")
            continue
        cell = {k: (fmt(med.get(k), ".3f") if k in med else ("n/a" if k not in c.tools else
                                                               "failed" if k in c.errors else "not run"))
                for k in ("mechattr", "captum", "inseq", "floor")}
        okp = c.peer_target is None or (r.get("peer") is not None and r["peer"] <= c.peer_target)
        okf = c.floor_target is None or (r.get("floor") is not None and r["floor"] <= c.floor_target)
        tgt = c.target + (f"; ≤ {c.floor_target} × floor" if c.floor_target else "")
        L.append(f"| {c.label} | {cell['mechattr']} | {cell['captum']} | {cell['inseq']} | {cell['floor']} | "
                 f"{fmt(r.get('peer'))} | {fmt(r.get('floor'))} | {tgt} {'✓' if okp and okf else '✗'} | {can} |")
    L.append("")
    L.append("## Agreement (max |score − floor score| over prompt tokens and target rows)\n")
    L.append("| case | mechattr | Captum | Inseq | max |score| |")
    L.append("|---|---|---|---|---|")
    for c in cases:
        if c.key == "rollout":
            continue
        a = agreement(c)
        L.append(f"| {c.key} | {fmt(a.get('mechattr'), '.1e')} | {fmt(a.get('captum'), '.1e')} | "
                 f"{fmt(a.get('inseq'), '.1e')} | {fmt(a.get('scale'), '.2e')} |")
    L.append("")
    mem = [c for c in cases if c.memory]
    if mem:
        L.append("## Peak memory (each tool alone in a subprocess)\n")
        L.append("Extra resident memory during one call over the loaded model (MiB), and peak RSS of the process.\n")
        L.append("| case | " + " | ".join(mem[0].tools) + " |")
        L.append("|---|" + "---|" * len(mem[0].tools))
        for c in mem:
            cells = []
            for t in c.tools:
                m = c.memory.get(t, {})
                cells.append("failed" if "error" in m or not m else f"+{m['extra_mb']:.0f} (peak {m['peak_mb']:.0f})")
            L.append(f"| {c.key} | " + " | ".join(cells) + " |")
        L.append("")
    errs = [(c.key, t, e) for c in cases for t, e in c.errors.items()]
    if errs:
        L.append("## Failures\n")
        L.extend(f"- {k} / {t}: `{e}`" for k, t, e in errs)
        L.append("")
    if flow:
        L.append("## Attention flow (`benchmarks/bench_flow.py`)\n")
        L.append("```\n" + flow.strip() + "\n```\n")
    if notes:
        L.append("## Notes\n")
        L.extend(f"- {n}" for n in notes)
        L.append("")
    L.append("## Long inputs\n")
    L.append("IG on SmolLM2 at 2,048 tokens (a full 50-step run) and one IG step at 2,048 and 8,192 tokens "
             "against a plain Hugging Face SDPA forward+backward, with peak memory: see "
             "[Long inputs](performance-long.md) (written by `python -m benchmarks.bench_long`).\n")
    L.append("## Scaling with input length\n")
    L.append("Time per IG step (the call's wall time over its steps, one forward+backward on one sequence "
             "per step) and peak extra memory against input length, each (tool, length) in its own process "
             "(`python -m benchmarks.bench_scaling`; the runs' JSON and figures were copied to docs/figures/ "
             "and are rendered here by `python -m benchmarks.run`). "
             "With 2 steps, mechattr's time per step carries its two no-grad completeness evaluations "
             "f(x), f(b) (about a third of a step each, so about +33%), which the floors do not compute; the "
             "like-for-like single-step comparison is in [Long inputs](performance-long.md). The points run one "
             "after another on a shared machine whose load moved during the run (see the conditions): the "
             "memory panel is stable, the time panel is not. Memory grows linearly with length for "
             "mechattr and the SDPA floor (about 2x per doubling) and faster for eager attention, Captum and "
             "Inseq (their attention patterns). Prefix reuse for the perturbation methods and the GPU check: "
             "[Scaling](performance-scaling.md).\n")
    from benchmarks.bench_scaling import markdown as scaling_md

    for stem, title in (("scaling-gpt2-small-cpu", "GPT-2-small shape"), ("scaling-smollm2-cpu", "SmolLM2-135M")):
        js = ROOT / "docs" / "figures" / f"{stem}.json"
        if js.exists():
            png = js.with_suffix(".png")
            L.append(f"### {title}\n")
            L.append(scaling_md(js, f"figures/{png.name}" if png.exists() else None))
    return "\n".join(L)


NOTES = [
    "IG on a forced continuation: mechattr and the floor interpolate every source token, the earlier "
    "continuation tokens included (they are sources of the later rows); Captum's `LLMGradientAttribution` "
    "keeps the continuation tokens at their real embeddings and only interpolates the prompt, so its rows "
    "after the first differ by design (row 1 agrees). Inseq interpolates the whole prefix like mechattr.",
    "Saliency is compared as the L1 norm of the gradient per token (`reduce='l1'`), which is what Inseq's "
    "saliency (Captum `Saliency`, abs=True, summed over d_model) gives; Captum's `LLMGradientAttribution` "
    "has no plain saliency, so that cell is n/a.",
    "Occlusion: Inseq's occlusion replaces the token embedding by zeros rather than token id 0, so its "
    "values differ by design; mechattr, Captum and the floor replace the token by id 0.",
    "Where mechattr's gradient time goes (`python -m benchmarks.profile_ig --threads 1 --steps 16`, 20 tokens, "
    "one core, 2026-11-30): one forward+backward as mechattr runs it costs 1.02x the same step on the plain "
    "Hugging Face model, 1.05x with the bridge fast path off (`MECHATTR_FAST_PATH=0`: the TransformerBridge's "
    "hooked components), and the whole IG call 1.10x the floor; the rest is the two no-grad target evaluations "
    "f(x), f(b) that the completeness diagnostics need (0.15x of a 16-step batch, about 5% at 50 steps). An earlier "
    "1.64x figure for the bridge was measured on a loaded machine.",
    "Why the IG targets are missed by a few percent: the floor itself sits at them. For one target the "
    "floor is about 0.69x the best peer (20 and 320 tokens), for the 10-token continuation about 0.5x, "
    "because the peers compute full-vocabulary logits at every position and, for a continuation, run one IG "
    "per target token. mechattr's forward and backward passes are at the floor (1.02x in the profile above); "
    "the remaining 4-5% is its completeness check, two extra no-grad forwards for f(x) and f(b) that neither "
    "the floor nor the peers compute. Going below the floor needs less arithmetic than the minimum for these "
    "numbers. Candidates, estimated and not done: reuse the BOS position's keys and values across steps (about "
    "5% at 20 tokens, nothing at 320); compute the last layer only at the read position (about 7%, needs an "
    "architecture-specific last block).",
    "Occlusion: the floor runs one batch holding the input and one copy per occluded position (400 token "
    "rows at 20 tokens). mechattr reuses the unchanged prefix (`mechattr.tl.prefix`): the changed suffixes "
    "of all copies run packed into one sequence with an explicit attention mask and positions, led by the "
    "unperturbed input (210 token rows at 20 tokens), so it goes below the floor; the scores equal the plain "
    "computation within 1e-5 (tests/test_perf_paths.py). `MECHATTR_PREFIX_REUSE=0` gives the plain batch.",
    "Occlusion at 320 tokens (one round without warm-up, mechattr, Captum and the floor on a quiet machine, "
    "2026-12-04 14:31; Inseq not run: about 10 more minutes of the shared machine): mechattr 154 s, Captum "
    "410 s, floor 521 s, so 0.38x Captum and 0.30x the floor; the 0.1x target is not met, and exact occlusion "
    "cannot meet it. Occluding position i leaves positions before i unchanged and changes every position "
    "from i on (attention carries the change forward), so an exact run must compute the suffix i..n-1 of every "
    "copy: n(n+1)/2 = 51,360 token rows at n = 320, half of the 102,720 that the plain batch (Captum, the "
    "floor) runs. mechattr runs exactly those rows (prefix reuse, packed suffixes), at 3.0 ms per row here "
    "against Captum's 4.0 ms (Captum also computes full-vocabulary logits at every position); 0.1x Captum "
    "would be 41 s, 0.8 ms per row, a quarter of what one row costs on this CPU. The earlier estimate that "
    "Captum costs 1.5x the floor (session 5, loaded machine, floor not timed) was wrong: measured, Captum "
    "runs at 0.79x this floor, whose eager attention over 321 full copies is not the least work at this length.",
    "Inseq 0.7.1 pins `typeguard<=2.13.3` while transformer-lens 4.3 needs `typeguard>=4.2`; Inseq never "
    "imports typeguard, so it is installed with `--no-deps` next to its real runtime dependencies (see "
    "benchmarks/README.md). Its `nvidia-*-cu11` requirements are CUDA wheels not needed on CPU.",
]


def flow_output(quick: bool) -> str | None:
    script = ROOT / "benchmarks" / "bench_flow.py"
    if not script.exists():
        return None
    args = [sys.executable, str(script)] + (["--sample", "1"] if quick else [])
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return p.stdout if p.returncode == 0 else f"failed (exit {p.returncode}):\n{p.stderr[-2000:]}"


def render_raw(raw: dict[str, Any], out: str) -> None:
    """Print the report of a saved run (current NOTES + the run's own) and write it to ``out``."""
    text = report(raw["cases"], raw["settings"], raw["quick"], raw["flow"], NOTES + raw["extra_notes"],
                  date=raw["date"], machine_desc=raw["machine"])
    print(text)
    if out != "-":
        Path(out).write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small settings (4 IG steps, 48-token long prompt)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--cases", default=None, help="comma list of: ig,ig_cont,ig_long,occlusion,occlusion_long,ixg,saliency,rollout")
    ap.add_argument("--tools", default="mechattr,captum,inseq,floor")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--no-memory", action="store_true", help="skip the per-tool memory subprocesses")
    ap.add_argument("--no-flow", action="store_true", help="skip benchmarks/bench_flow.py")
    ap.add_argument("--no-warmup", action="store_true",
                    help="long cases (ig_cont, ig_long, occlusion_long): time the first call as round 1 instead of an untimed warm-up")
    ap.add_argument("--out", default=str(ROOT / "docs" / "performance.md"), help="'-' to skip writing")
    ap.add_argument("--render", default=None, metavar="PKL",
                    help="re-render the report from a saved run (its raw results) without measuring")
    ap.add_argument("--merge-raw", default=None, metavar="PKL",
                    help="after measuring --cases, put them into this saved run (replacing those cases) and "
                         "render the report from it: e.g. re-measure the short cases on a quiet machine")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.case, a.quick, a.threads)
        return
    if a.render:
        render_raw(pickle.loads(Path(a.render).read_bytes()), a.out)
        return
    torch.set_num_threads(a.threads)
    s = QUICK if a.quick else FULL
    if a.rounds:
        s = Settings(**{**s.__dict__, "rounds": a.rounds})

    def log(msg: str) -> None:
        print(msg, flush=True)

    mdir = model_dir()
    only = set(a.cases.split(",")) if a.cases else None
    cases = make_cases(mdir, s, only)
    wanted = a.tools.split(",")
    n_notes = len(NOTES)
    tools: dict[str, Any] = {}
    for name in wanted:
        try:
            tools[name] = TOOLS[name](str(mdir))
        except Exception as e:  # e.g. Inseq not installed: benchmark the rest, say why
            log(f"{name} unavailable: {type(e).__name__}: {e}")
            NOTES.append(f"{name} could not be loaded: `{type(e).__name__}: {str(e)[:200]}`")
    for c in cases:
        log(f"{c.label}")
        run_case(c, tools, s.rounds, log, warmup=not (a.no_warmup and c.key in LONG_CASES))
        r = ratios(c)
        log("  ratios: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        log("  agreement: " + ", ".join(f"{k} {v:.2e}" for k, v in agreement(c).items()))
    if not a.no_memory:
        for c in cases:
            if c.key == "ig_long":
                log("peak memory, one subprocess per tool:")
                measure_memory(c, a.quick, a.threads, log)
    flow = None if a.no_flow or (only and "flow" not in only) else flow_output(a.quick)
    if a.merge_raw:
        raw = pickle.loads(Path(a.merge_raw).read_bytes())
        fresh = {c.key: c for c in cases}
        raw["cases"] = [fresh.pop(c.key, c) for c in raw["cases"]] + list(fresh.values())
        raw["extra_notes"] = raw["extra_notes"] + [
            f"Re-measured on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} ({a.rounds or s.rounds} rounds, "
            f"torch threads {a.threads}{', long cases without warm-up: the first call is round 1' if a.no_warmup else ''}) "
            "and merged into the run above: " + ", ".join(f"`{k}`" for k in sorted(
                c.key for c in cases)) + "."]
        Path(a.merge_raw).write_bytes(pickle.dumps(raw))
        render_raw(raw, a.out)
        return
    text = report(cases, s, a.quick, flow, NOTES)
    print("\n" + text)

    raw_path = model_dir().parent / ("last_run_quick.pkl" if a.quick else "last_run.pkl")
    raw_path.write_bytes(pickle.dumps({"cases": cases, "settings": s, "quick": a.quick, "flow": flow,
                                       "extra_notes": NOTES[n_notes:],
                                       "date": datetime.datetime.now().strftime('%Y-%m-%d %H:%M'),
                                       "machine": machine()}))
    log(f"raw results: {raw_path} (python -m benchmarks.run --render {raw_path})")
    if a.out != "-":
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
        log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
