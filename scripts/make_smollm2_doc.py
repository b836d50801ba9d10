"""Regenerate the numeric parts of docs/smollm2.md: the worked example ("The capital of France is"
-> " Paris", every registered method at its defaults) and the IG completeness table.

    OMP_NUM_THREADS=1 python scripts/make_smollm2_doc.py [--out docs/smollm2.md] [--threads 1]

Only the text between ``<!-- BEGIN generated: NAME -->`` and ``<!-- END generated: NAME -->`` is
rewritten; the prose around it is hand-written and must not state numbers the script produces
(the "reading" paragraph under the table is generated from the same results). Numbers are whatever
they turn out to be; the script never edits them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mechattr as ma  # noqa: E402
from mechattr.errors import MechattrError  # noqa: E402

PROMPT, TARGET = "The capital of France is", " Paris"
# res.params keys worth showing in the table (resolved values: what the call actually used)
SHOW = ("n_steps", "rule", "baseline", "n_samples", "n_baselines", "n_anchors", "n_neighbors", "strategy",
        "n_permutations", "replacement", "measure", "aggregate", "normalize", "rules")
# IG completeness on SmolLM2 from different rules and baselines (the doc explains why the defaults
# are adaptive + "auto"): (label, kwargs)
IG_ROWS = [
    ("Gauss–Legendre 50, zero (the default before `auto`/`adaptive`)", dict(rule="gausslegendre", n_steps=50, baseline="zero")),
    ("midpoint 16, zero", dict(rule="riemann_middle", n_steps=16, baseline="zero")),
    ("midpoint 64, zero (the planning setup)", dict(rule="riemann_middle", n_steps=64, baseline="zero")),
    ("Gauss–Legendre 50, `eos` baseline", dict(rule="gausslegendre", n_steps=50, baseline="eos")),
    ("Gauss–Legendre 50, `mean` baseline", dict(rule="gausslegendre", n_steps=50, baseline="mean")),
    ("adaptive, `auto` baseline — **the defaults**", dict()),
    ("adaptive, zero baseline", dict(rule="adaptive", baseline="zero")),
]


def fmt(x: float) -> str:
    if x == 0:
        return "0"
    s = f"{x:.3g}"
    return s.replace("-", "−")


def call(model: Any, method: str, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    res = ma.attribute(model, PROMPT, TARGET, method=method, quiet=True, **kw)
    return res, time.perf_counter() - t0


def ranking(tokens: list[str], s: torch.Tensor) -> list[str]:
    order = sorted(range(len(tokens)), key=lambda i: (-float(s[i]), i))  # ties in input order
    return [tokens[i].strip() or repr(tokens[i]) for i in order]


def row(name: str, res: Any, secs: float, label: str | None = None) -> tuple[str, list[str]]:
    r = res.final()
    s = r.token_scores(0).detach().double().cpu()
    toks = list(r.tokens)
    p = res.params
    shown = [f"{k}={p[k]}" for k in SHOW if k in p and p[k] is not None]
    comp = res.diagnostics.get("completeness_relative_error")
    extra = ", ".join(shown)
    if comp is not None:
        extra += f"{', ' if extra else ''}completeness error {100 * comp:.2g}%"
    head = label or (f"`{name}`" + (f" — {extra}" if extra else ""))
    best = int(torch.argmax(s))
    cells = [f"**{fmt(float(v))}**" if i == best else fmt(float(v)) for i, v in enumerate(s)]
    rk = ranking(toks, s)
    return f"| {head} | " + " | ".join(cells) + f" | {' > '.join(rk)} | {secs:.1f} |", rk


def replace_block(text: str, name: str, body: str) -> str:
    pat = re.compile(rf"(<!-- BEGIN generated: {name} -->\n).*?(<!-- END generated: {name} -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"marker block {name!r} not found in the doc")
    return pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "smollm2.md")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    load0 = os.getloadavg()
    t_all = time.perf_counter()
    model = ma.load_model("smollm2-135m")
    call(model, "saliency")  # warm-up, not timed
    methods = [m.name for m in ma.list_methods() if m.family != "test"]
    toks = None
    lines, ranks, ranks_params = [], {}, {}
    for name in methods:
        res, secs = call(model, name)
        toks = toks or [t.strip() or repr(t) for t in res.final().tokens]
        ln, rk = row(name, res, secs)
        if name == "integrated_gradients":
            ig_fx, ig_fb = res.diagnostics["f_input"][0], res.diagnostics["f_baseline"][0]
        lines.append(ln)
        ranks[name] = rk
        ranks_params[name] = res.params.get("baseline")
        print(name, f"{secs:.1f}s", file=sys.stderr, flush=True)
    plan_res, plan_s = call(model, "integrated_gradients", n_steps=64, rule="riemann_middle", baseline="zero")
    pc = plan_res.diagnostics["completeness_relative_error"]
    ln, rk = row("ig_plan", plan_res, plan_s,
                 f"`integrated_gradients` — 64 midpoint steps, zero baseline (the planning setup, completeness error {100 * pc:.2g}%)")
    lines.append(ln)
    ranks["ig_zero_plan"] = rk
    header = ("| method (settings shown as resolved) | " + " | ".join(toks) + " | ranking | s |\n|---|"
              + "---|" * (len(toks) + 2))
    # the reading, from the same numbers
    pert = ["occlusion", "lime", "kernel_shap", "shapley", "shapley_sampling", "reagent"]
    first = {m: ranks[m][0] for m in ranks}
    pert_first = sorted({first[m] for m in pert})
    rule_based = ["attnlrp", "cp_lrp", "gim"]
    reading = [
        f"Top token per method: " + "; ".join(f"`{m}` {first[m]}" for m in methods) + f"; IG from the zero "
        f"baseline (planning row) {first['ig_zero_plan']}.",
        "",
        f"The perturbation methods ({', '.join(pert)}) put " + (
            f"**{pert_first[0]}** first, all of them" if len(pert_first) == 1 else
            "different tokens first: " + ", ".join(f"{m} {first[m]}" for m in pert)) + "; "
        f"their second tokens: " + ", ".join(f"{m} {ranks[m][1]}" for m in pert) + ".",
        f"The rule-based backward passes rank: " + "; ".join(f"{m} {' > '.join(ranks[m][:2])}" for m in rule_based)
        + f". IG at its defaults (pad baseline): {' > '.join(ranks['integrated_gradients'][:2])}; from the zero "
        f"baseline: {' > '.join(ranks['ig_zero_plan'][:2])}; input×gradient {' > '.join(ranks['input_x_gradient'][:2])}; "
        f"saliency {' > '.join(ranks['saliency'][:2])}.",
    ]
    wall = time.perf_counter() - t_all
    load1 = os.getloadavg()
    # IG completeness table
    ig_lines = ["| rule, steps, baseline | completeness error (absolute / relative to f(x) − f(b)) |", "|---|---|"]
    for label, kw in IG_ROWS:
        try:
            res, _ = call(model, "integrated_gradients", **kw)
        except MechattrError as e:
            msg = str(e)
            first_sentence = msg.split(" (e.g")[0] if " (e.g" in msg else msg.split(". ")[0].rstrip(".")
            ig_lines.append(f"| {label} | refused: {first_sentence} (`{type(e).__name__}`) |")
            continue
        d = res.diagnostics
        extra = ""
        if res.params.get("rule") == "adaptive":
            extra = (f" ({d['n_forward_points']} points, {d['rounds']} rounds; baseline resolved to "
                     f"`{res.params['baseline']}`)")
        ig_lines.append(f"| {label} | {d['completeness_error']:.3g} / {100 * d['completeness_relative_error']:.2g}%{extra} |")
        print(label, file=sys.stderr, flush=True)
    note = (f"All {len(methods)} registered methods, one call each (`ma.attribute(model, PROMPT, \" Paris\", "
            f"method=NAME)`) at their defaults, in one process on one CPU thread, generated by "
            f"`scripts/make_smollm2_doc.py` (mechattr {ma.__version__}, TransformerLens "
            f"{_tl_version()}); load average before/after {load0[0]:.1f}/{load1[0]:.1f} on a shared 2-core "
            f"machine, so the last column (wall seconds) is a rough guide only; {wall:.0f} s in all. Layered "
            "methods are read at the final layer (`res.final()`). Ties are listed in input order. "
            f"IG at its defaults: f(x) = {fmt(ig_fx)}, f(b) = {fmt(ig_fb)} (baseline "
            f"`{ranks_params['integrated_gradients']}`).")
    text = a.out.read_text()
    text = replace_block(text, "worked-example", "\n".join([header, *lines, "", note, "", *reading]))
    text = replace_block(text, "ig-completeness", "\n".join(ig_lines))
    a.out.write_text(text)
    print(f"wrote {a.out} in {time.perf_counter() - t_all:.0f} s", file=sys.stderr)


def _tl_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        return "unknown"


if __name__ == "__main__":
    main()
