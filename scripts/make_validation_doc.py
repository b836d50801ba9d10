"""Write docs/validation.md: mechattr.validate numbers for every registered method on SmolLM2
(falls back to the tiny random model, and says so, when SmolLM2 cannot be loaded) and on the zoo.

    python scripts/make_validation_doc.py [--out docs/validation.md] [--methods a b ...]
        [--prompts N] [--stride S] [--zoo agreement recall] [--skip-smollm] [--quick] [--merge]
        [--threads T]

``--quick`` (a CPU run of about 20 minutes): no sampling/exhaustive perturbation methods and no
discretized IG (a kNN graph over SmolLM2's 49k-token vocabulary), fewer IG/SmoothGrad/GradientSHAP
samples, the cascading randomization schedule only, and a smaller ROAR-lite set. The doc
records the settings it was produced with. The doc is rewritten after every section, so an
interrupted run still leaves the finished sections. ``--merge`` keeps the sections of an existing
doc that this run does not recompute (e.g. ``--skip-smollm`` in one process and ``--zoo`` with no
task in another, each pinned to its own core); every section records the settings it was made with.

How docs/validation.md was made in session 5 (one thread each, in the background):

    python scripts/make_validation_doc.py --zoo --merge --threads 1 --json-dir /tmp/vd   # SmolLM2 only, ~45 min
    python -m benchmarks.bench_lrp_prompts --repeats 5 > benchmarks/results/bench_lrp_prompts.json
    gzip -9 -c /tmp/vd/smollm2.json > docs/data/validation-smollm2.json.gz   # kept: the #17 section's source
    python scripts/make_validation_doc.py --zoo --skip-smollm --merge \
        --rule-summary docs/data/validation-smollm2.json.gz --bench-json benchmarks/results/bench_lrp_prompts.json
    python scripts/make_attention_doc.py     # the Jain & Wallace section

Numbers are whatever they turn out to be; the script never edits them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path
from typing import Any

# the repository's own package, not whatever `mechattr` the interpreter would find first
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mechattr as ma  # noqa: E402

# The SmolLM2 prompt set (issue #17/#19, session 5). Fixed BEFORE any attribution on them was
# computed; the only screening was that the model's greedy next token (the validated target) is the
# answer each prompt was written for, checked once with a plain forward: "The author of the books
# that the critics loved so much" (-> "." not " is") and "In Berlin, most of the people ... speak"
# (-> " English") failed it; the first was dropped (two rewordings also failed), the second replaced
# by its first rewording below. 10-21 tokens each (SmolLM2 prepends no BOS), and on most the deciding
# token is NOT the last one, so the recency control (latest token first) is a fair bar, not a given.
LM_PROMPTS = [
    # factual recall: the deciding tokens (" Eiffel Tower") are 13+ tokens before the answer " Paris"
    "The Eiffel Tower is a famous iron tower, and it stands in the city of",
    # IOI (Wang et al. 2022): the answer " Mary" is the non-repeated name, far from the end
    "When Mary and John went to the store, John gave a drink to",
    # IOI with other names and a longer middle -> " Lisa"
    "After Lisa and Tom finished their dinner at the restaurant, Tom handed the bill to",
    # agreement across a distractor: plural " keys" decides " are" over the singular " cabinet"/" hallway"
    "The keys to the old wooden cabinet in the hallway",
    # counting: here the last tokens DO decide (" seven,") -> " eight"; kept so recency has its case too
    "One, two, three, four, five, six, seven,",
    # factual recall: " Germany" (position 1) decides -> " German"
    "In Germany, most of the people that you meet on the street speak",
    # in-context analogy: " up" (two from the end) decides -> " down"; " hot"/" cold" set the pattern
    "The opposite of hot is cold, and the opposite of up is",
    # copying across a distractor sentence (induction): " apple" at position 4 -> " apple"
    "The secret word is apple. Remember it. Later I asked: what was the secret word? It was",
    # factual recall: " Great Wall" at the start decides -> " China"
    "The Great Wall is a famous landmark that millions of tourists visit every year in",
]
# Methods too slow for a CPU run on a 135M model with many prompts and randomization steps.
SLOW = {"shapley", "kernel_shap", "lime", "shapley_sampling", "reagent",
        "discretized_integrated_gradients", "uniform_discretized_integrated_gradients"}
# The SmolLM2 section's own settings (a full run must fit ~1 h of one busy CPU core; measured on
# one 16-token prompt of LM_PROMPTS, one thread, load ~3.5 on 2 cores, seconds per ma.attribute call:
# lime 5000 samples > 210 (killed), lime 500: 25; integrated_gradients 32; kernel_shap 21;
# shapley_sampling 18; value_zeroing 15-17; reagent 16; gradient_shap 11; DIG/UDIG 6-7; the rest
# < 3.5 each). Every randomization state re-runs every method on every prompt, so:
# - exact Shapley is left out: 2^n forward passes, n = 10-21 tokens here, above its own
#   max_features=12 (it refuses); kernel_shap and shapley_sampling estimate the same values;
# - LIME uses 500 samples, not its default 5000 (10x the time);
# - randomization: the cascading schedule only, measured at the fully randomized end point only
#   (stride 32 = the number of parameter groups: output, 30 blocks, embeddings); that end point is
#   what the verdict reads, the intermediate curve is not drawn.
LM_EXCLUDE = {"shapley": "exact Shapley needs 2^n forward passes for n = 10-21 tokens, above its max_features=12"}
LM_PARAMS = {"lime": {"n_samples": 500}}
LM_RANDOMIZATION = ("cascading",)
# - the randomization check is not run for these (each ~10-35 s per prompt and model state on a
#   busy core); everything else is:
LM_NO_RANDOMIZATION = ["value_zeroing", "discretized_integrated_gradients", "uniform_discretized_integrated_gradients",
                       "gradient_shap", "kernel_shap", "lime", "reagent", "shapley_sampling"]
LM_RUN2_CHECKS = ["completeness", "perturbation", "agreement", "ablation"]
LM_STRIDE = 32
QUICK_PARAMS = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 8}, "gradient_shap": {"n_samples": 8}}
QUICK_ROAR = {"n_train": 160, "n_test": 128, "n_random": 3, "steps": 120}


def method_list(names: list[str] | None, quick: bool) -> list[str]:
    if names:
        return names
    # Every registered method; layered ones (attention family, value zeroing, token x head) are
    # validated on their final-layer token scores (heads summed), as ma.validate does.
    out = [m.name for m in ma.list_methods() if m.family != "test"]
    return [m for m in out if not (quick and m in SLOW)]


def section(title: str, rep: ma.ValidationReport, note: str = "") -> str:
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    m = rep.meta
    lines += [
        f"Model `{m['model']}`, target: {m['target']}, {len(m['prompts'])} prompts, seed {m['seed']}, "
        f"TransformerLens {m['transformer_lens']}. Seconds per check: `{json.dumps(m['seconds'])}`.",
        "",
        rep.to_markdown(),
        "",
        "Criteria: " + "; ".join(f"**{k}**: {v}" for k, v in rep.criteria().items()),
        "",
    ]
    if "completeness" in rep.checks and not rep.checks["completeness"].unavailable:
        c = rep.checks["completeness"]
        fails = [lab for lab, v in c.verdicts.items() if v.passed is False]
        if fails:
            lines += ["Completeness failures, worst prompt, with |f(x) − f(b)| and the absolute error (a large "
                      "relative error over a tiny |f(x) − f(b)|, where the baseline already gives nearly the same "
                      "output, is an ill-conditioned check rather than a large error):", ""]
        for lab in fails:
            rel = [r for r in c.records if r["method"] == lab and r["metric"] == "rel_error"]
            w = max(rel, key=lambda r: r["value"])
            ab = next(r["value"] for r in c.records if r["method"] == lab and r["metric"] == "abs_error"
                      and r.get("prompt") == w.get("prompt") and r.get("row") == w.get("row"))
            delta = ab / w["value"] if w["value"] else float("nan")
            lines.append(f"- `{lab}`, prompt {w.get('prompt')}: |f(x) − f(b)| = {delta:.3g}, "
                         f"|Σ scores − (f(x) − f(b))| = {ab:.3g}, relative {w['value']:.3g}.")
        if fails:
            lines.append("")
    if "perturbation" in rep.checks and not rep.checks["perturbation"].unavailable:
        s = rep.checks["perturbation"].data["summary"]
        keys = ["aopc", "deletion_auc_norm", "insertion_auc_norm", "comprehensiveness", "sufficiency",
                "eraser_comprehensiveness", "eraser_sufficiency"]
        lines += ["Perturbation summary (means over prompts; random = mean over seeds, then its std):", ""]
        lines += ["| ordering | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for lab, v in s.items():
            lines.append(f"| {lab} | " + " | ".join(f"{v[k]:.4g}" for k in keys) + " |")
        lines.append("")
    if "agreement" in rep.checks and not rep.checks["agreement"].unavailable:
        blocks = rep.checks["agreement"].data.get("blocks") or [rep.checks["agreement"].data]
        for i, d in enumerate(blocks):
            head = "Agreement (mean Spearman)" + (f", run {i + 1} of {len(blocks)} (methods of the same run only)" if len(blocks) > 1 else "")
            lines += [head + ":", "", "| | " + " | ".join(d["labels"]) + " |", "|---|" + "---|" * len(d["labels"])]
            for a, row in zip(d["labels"], d["matrices"]["spearman"]):
                lines.append(f"| {a} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
            lines.append("")
    if "roar" in rep.checks and rep.checks["roar"].data.get("table"):
        lines += ["ROAR-lite:", "", "| masking | k | accuracy | drop |", "|---|---|---|---|"]
        for r in rep.checks["roar"].data["table"]:
            lines.append(f"| {r['masking']} | {r['k']} | {r['accuracy']:.3f} | {r['drop']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def merge_reports(reps: list[ma.ValidationReport]) -> ma.ValidationReport:
    """One report from validate runs over disjoint method lists on the same model, prompts, target
    and seed (the controls and random orderings are then identical; checked). A check that a later
    run skipped (randomization, for the costly methods) reads n/a for its methods; agreement stays
    per run (its matrices compare the methods of one run)."""
    from mechattr.validation._result import CheckResult, Verdict

    first = reps[0]
    for r in reps[1:]:
        assert r.meta["prompts"] == first.meta["prompts"] and r.meta["seed"] == first.meta["seed"]
    checks: dict[str, CheckResult] = {}
    names = list(dict.fromkeys(n for r in reps for n in r.checks))
    for n in names:
        have = [r for r in reps if n in r.checks]
        c0 = have[0].checks[n]
        # the controls' and random orderings' records once (from the first run), each method's from its run
        recs = list(c0.records) + [x for r in have[1:] for x in r.checks[n].records if x.get("method") in r.methods]
        c = CheckResult(n, records=recs, data=dict(c0.data),
                        notes=list(dict.fromkeys(x for r in have for x in r.checks[n].notes)), unavailable=c0.unavailable)
        for r in reps:
            if n in r.checks:
                c.verdicts.update(r.checks[n].verdicts)
            else:
                for m in r.methods:
                    c.verdicts[m] = Verdict(None, None, None, "", "not run for this method (cost)")
        if n == "perturbation" and not c.unavailable:
            summ = {}
            controls = {k: v for k, v in c0.data["summary"].items() if k not in have[0].methods}
            for r in have:
                rs = r.checks[n].data["summary"]
                summ.update({k: v for k, v in rs.items() if k in r.methods})
                ctl = {k: v for k, v in rs.items() if k not in r.methods}
                if ctl != controls:
                    raise SystemExit("the controls differ between runs; the runs cannot be merged")
            c.data["summary"] = {**summ, **controls}
        if n == "agreement" and not c.unavailable:
            c.data["blocks"] = [r.checks[n].data for r in have]
        checks[n] = c
    meta = dict(first.meta)
    meta["methods"] = [m for r in reps for m in r.methods]
    meta["seconds"] = [r.meta["seconds"] for r in reps]
    return ma.ValidationReport(methods=[m for r in reps for m in r.methods], checks=checks, meta=meta)


RULE_METHODS = ["attnlrp", "cp_lrp", "gim"]
RULE_COMPARE = ["integrated_gradients", "saliency", "input_x_gradient", "occlusion"]


def _slug(title: str) -> str:
    """The anchor mkdocs' toc extension gives a heading."""
    import re

    t = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[\s-]+", "-", t)


def _verdict(cell: str) -> tuple[bool | None, str]:
    head = cell.split(" ", 1)[0]
    return ({"PASS": True, "FAIL": False}.get(head), cell)


def reading_without_content_blind(rep: dict[str, Any], recs: list[dict[str, Any]], rows: dict[str, Any],
                                  bench: dict[str, Any] | None) -> list[str]:
    """#17 was written when a PASS meant beating random orderings (and the frequency control);
    #19 then added the content-blind position and recency controls. The same run read against
    random and frequency alone, so the decision the target needs can be taken on the numbers:
    deletion AOPC > max(random mean + margin·std, frequency), ablation Spearman > max(min_corr,
    frequency), the bars the checks compute (mechattr/validation/perturbation_curves.py,
    ablation.py)."""
    opts = rep.get("meta", {}).get("options", {})

    def mean_of(check: str, metric: str, method: str) -> float | None:
        v = [r["value"] for r in recs if r["check"] == check and r["metric"] == metric and r["method"] == method]
        return v[0] if len(v) == 1 else None

    from mechattr.validation.perturbation_curves import deletion_bars

    labels = ("random", "random ± std", "frequency", "position", "recency")
    aopc = {k: mean_of("perturbation", "mean_aopc", k) for k in labels}
    f_abl = mean_of("ablation", "mean_spearman", "frequency")
    if None in (aopc["random"], aopc["random ± std"], aopc["frequency"], f_abl) or "margin" not in opts \
            or "ablation_min_corr" not in opts:
        return []
    # the check's own bars (random mean + margin·std, each control), of which only random and frequency
    bars = deletion_bars({k: {"aopc": float("nan") if v is None else v} for k, v in aopc.items()}, float(opts["margin"]))
    bar_d = max(bars["random"], bars["frequency"])
    bar_a = max(float(opts["ablation_min_corr"]), f_abl)  # type: ignore[arg-type]
    out = ["", f"Read against random and frequency alone (the bars before #19 added the position and recency "
               f"controls): deletion AOPC > {bar_d:.3f} (random mean + {opts['margin']}·std, frequency), ablation "
               f"Spearman > {bar_a:.3f} (min {opts['ablation_min_corr']}, frequency)."]
    got, ok = [], {}
    for m in RULE_METHODS + ["integrated_gradients"]:
        d, a = mean_of("perturbation", "mean_aopc", m), mean_of("ablation", "mean_spearman", m)
        if m not in rows or d is None or a is None:
            continue
        ok[m] = d > bar_d and a > bar_a
        got.append(f"`{m}` deletion {'PASS' if d > bar_d else 'FAIL'} {d:.3g}, ablation {'PASS' if a > bar_a else 'FAIL'} {a:.3g}")
    if not got:
        return []
    met = [m for m in RULE_METHODS if ok.get(m) and bench is not None and bench["x_saliency_median"][m] <= 2.0]
    verdict = (f"the target would be met by {', '.join(f'`{m}`' for m in met)}" if met and ok.get("integrated_gradients") is False
               else "the target would not be met either")
    return out + ["", "Under those bars: " + "; ".join(got) + f". So read this way {verdict}; the verdict above, "
                  "against every control, is the one this project reports."]


def rule_section(report_json: Path, bench_json: Path | None) -> str:
    """#17's target read off the SmolLM2 section's own report (no model work): does a rule-based
    method pass deletion and ablation where IG fails, at <= 2x one saliency call?"""
    rep = json.loads(gzip.decompress(report_json.read_bytes()) if report_json.suffix == ".gz" else report_json.read_text())
    rows = {r["method"]: r for r in rep["summary"]}
    bench = json.loads(bench_json.read_text()) if bench_json else None
    lines = [f"## {RULE_TITLE}", "",
             "Issue #17's target: at least one of `attnlrp`, `cp_lrp`, `gim` passes deletion (perturbation) and "
             "ablation on SmolLM2 where integrated gradients fails, at ≤ 2× the time of one saliency call. The "
             "verdicts are the SmolLM2 section's above (same run, same prompts, the same controls: a PASS beats "
             "random orderings and the frequency, position and recency controls); the times are "
             "`benchmarks/bench_lrp_prompts.py`, side by side in one process on the same prompts.", ""]
    cols = ["method", "perturbation (deletion AOPC)", "ablation (Spearman)", "randomization"]
    if bench:
        cols += ["time ÷ saliency, median (max) over prompts", "time ÷ IG, median"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for m in RULE_METHODS + RULE_COMPARE:
        if m not in rows:
            continue
        r = rows[m]
        cells = [f"`{m}`", r["perturbation"], r["ablation"], r["randomization"]]
        if bench:
            if m in RULE_METHODS:
                cells += [f"{bench['x_saliency_median'][m]:.2f} ({bench['x_saliency_max'][m]:.2f})",
                          f"{bench['x_ig_median'][m]:.4f}"]
            elif m == "integrated_gradients":
                cells += [f"{bench['ig_x_saliency_median']:.0f}", "1"]
            elif m == "saliency":
                cells += ["1", f"{1 / bench['ig_x_saliency_median']:.4f}"]
            else:
                cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    # the bars each verdict had to clear, recomputed from the report's records (means over prompts)
    import statistics

    # one record per (check, method, metric, prompt, row, seed): a report merged by an older build
    # carried the controls once per run
    recs = list({(r["check"], r["method"], r["metric"], r.get("prompt"), r.get("row"), r.get("seed"), r.get("mode"),
                  r.get("step")): r for r in rep.get("records", [])}.values())

    def per_prompt(check: str, metric: str, m: str) -> list[float]:
        return [r["value"] for r in sorted((r for r in recs if r["check"] == check and r["metric"] == metric
                                            and r["method"] == m), key=lambda r: r.get("prompt", 0))]

    rnd = [r for r in recs if r["check"] == "perturbation" and r["metric"] == "aopc" and r["method"] == "random"]
    if rnd:
        seeds = sorted({r.get("seed") for r in rnd})
        per_seed = [statistics.mean(r["value"] for r in rnd if r.get("seed") == sd) for sd in seeds]
        ctl = {c: per_prompt("perturbation", "aopc", c) for c in ("frequency", "position", "recency")}
        abl = {c: per_prompt("ablation", "spearman", c) for c in ("frequency", "position", "recency")}
        lines += ["", f"The bars (means over the {len(ctl['recency'])} prompts): deletion AOPC random "
                  f"{statistics.mean(per_seed):.3f} ± {statistics.stdev(per_seed) if len(per_seed) > 1 else 0:.3f}, "
                  + ", ".join(f"{c} {statistics.mean(v):.3f}" for c, v in ctl.items() if v)
                  + "; ablation Spearman " + ", ".join(f"{c} {statistics.mean(v):.3f}" for c, v in abl.items() if v) + ".",
                  "", "Ablation Spearman per prompt (prompt order of the SmolLM2 section):", "",
                  "| ordering | " + " | ".join(str(i) for i in range(len(abl["recency"]))) + " |",
                  "|---|" + "---|" * len(abl["recency"])]
        for m in RULE_METHODS + ["integrated_gradients", "occlusion", "position", "recency"]:
            v = per_prompt("ablation", "spearman", m)
            if v:
                lines.append(f"| {m} | " + " | ".join(f"{x:.2f}" for x in v) + " |")
    ig = rows.get("integrated_gradients")
    ig_fails = ig is not None and (_verdict(ig["perturbation"])[0] is False or _verdict(ig["ablation"])[0] is False)
    met, why = [], []
    for m in RULE_METHODS:
        if m not in rows:
            continue
        d, ab = _verdict(rows[m]["perturbation"])[0], _verdict(rows[m]["ablation"])[0]
        cheap = bench is not None and bench["x_saliency_median"][m] <= 2.0
        if d and ab and ig_fails and cheap:
            met.append(m)
        else:
            why.append(f"`{m}`: " + ", ".join(
                x for x, bad in (("fails deletion", not d), ("fails ablation", not ab),
                                 ("over 2× saliency (median over prompts)", bench is not None and not cheap)) if bad) or m)
    lines.append("")
    if ig is None:
        lines.append("Integrated gradients was not in this run; the comparison needs it.")
    elif not ig_fails:
        lines.append("**Target not met as posed**: integrated gradients does not fail deletion or ablation here.")
    elif met:
        lines.append(f"**Target met** by {', '.join(f'`{m}`' for m in met)}" + (f"; not by {'; '.join(why)}." if why else "."))
    else:
        lines.append(f"**Target not met** on these prompts: {'; '.join(why)}.")
    lines += reading_without_content_blind(rep, recs if rnd else [], rows, bench)
    if bench:
        lines += ["", f"Timing: SmolLM2-135M, {bench['threads']} thread, {bench['repeats']} interleaved repeats per prompt "
                  f"(median), IG once per prompt at its defaults (adaptive, `auto` baseline); load average "
                  f"{bench['loadavg_before'][0]:.1f} before, {bench['loadavg_after'][0]:.1f} after, on a shared 2-core machine. "
                  f"Per prompt (tokens: ×saliency attnlrp/cp_lrp/gim; IG seconds and points): "
                  + "; ".join(f"{r['tokens']}: {r['x_saliency']['attnlrp']:.2f}/{r['x_saliency']['cp_lrp']:.2f}/"
                              f"{r['x_saliency']['gim']:.2f}, IG {r['seconds'].get('integrated_gradients', float('nan')):.1f} s "
                              f"({r.get('ig_points')})" for r in bench["per_prompt"]) + ".",
                  f"Source: `{bench_json}` (`python -m benchmarks.bench_lrp_prompts --repeats {bench['repeats']}`)."]
    lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "mechattr"], capture_output=True, text=True).stdout
        return out.stdout.strip() + (" (mechattr/ modified)" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _uptime() -> str:
    try:
        return "load average " + ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


RULE_TITLE = "Rule-based methods against IG on SmolLM2 (issue #17)"
ATTENTION_TITLE = "Is attention an explanation? Jain & Wallace's checks"  # written by make_attention_doc.py


def section_key(title: str) -> str:
    """"lm" for the language-model section, "zoo:<task>", else the title itself."""
    if title.startswith("zoo:"):
        return title
    if title.startswith(("SmolLM2", "tiny-gpt2")):
        return "lm"
    return title


def section_order(k: str) -> tuple[int, str]:
    return ({"lm": 0, RULE_TITLE: 1}.get(k, 3 if k == ATTENTION_TITLE else 2), k)


def replace_section(path: Path, title: str, body: str) -> None:
    """Put one section (``## title`` + body) into an existing validation doc, keeping its header, its
    other sections and its last line; for scripts that own one section (make_attention_doc.py)."""
    text = path.read_text()
    head = text[: text.index("\n## ") + 1] if "\n## " in text else text
    tail = [ln for ln in text.splitlines() if ln.startswith("_The last run took")]
    secs = old_sections(path)
    secs[section_key(title)] = f"## {title}\n\n{body.strip()}\n"
    order = sorted(secs, key=section_order)
    path.write_text(head + "\n".join(secs[k].rstrip("\n") + "\n" for k in order) + ("\n" + tail[-1] + "\n" if tail else ""))


def old_sections(path: Path) -> dict[str, str]:
    """The sections of an existing doc, keyed by :func:`section_key`."""
    if not path.exists():
        return {}
    out: dict[str, str] = {}
    key = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            key = section_key(line[3:].strip())
            out[key] = ""
        elif line.startswith(("_Generated in", "_Run in progress", "_The last run took", "_The last pass recomputed")):
            key = None
        if key is not None:
            out[key] += line + "\n"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/validation.md"))
    p.add_argument("--methods", nargs="*")
    p.add_argument("--prompts", type=int, default=3, help="zoo prompts per task")
    p.add_argument("--lm-prompts", type=int, default=len(LM_PROMPTS), help="SmolLM2 prompts (the first N of LM_PROMPTS)")
    p.add_argument("--stride", type=int, default=6, help="randomization: measure every S-th layer group")
    p.add_argument("--zoo", nargs="*", default=["agreement", "recall"])
    p.add_argument("--skip-smollm", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer/cheaper methods and samples (see the docstring)")
    p.add_argument("--merge", action="store_true", help="keep the existing doc's sections this run does not recompute")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json-dir", type=Path, help="also save each section's full report (ValidationReport.to_json) here")
    p.add_argument("--rule-summary", type=Path, metavar="REPORT_JSON",
                   help="write the #17 section from a saved SmolLM2 report (--json-dir's smollm2.json); no model work")
    p.add_argument("--bench-json", type=Path, help="benchmarks/bench_lrp_prompts.py's output for the #17 section")
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    t0 = time.time()
    uptime0 = _uptime()
    methods = method_list(a.methods, a.quick)
    method_params = {k: v for k, v in QUICK_PARAMS.items() if k in methods} if a.quick else {}
    schedules = ("cascading",) if a.quick else ("cascading", "independent")
    roar_config = dict(QUICK_ROAR) if a.quick else {}
    settings = {
        "methods": methods, "method_params": method_params, "prompts": a.prompts, "lm_prompts": a.lm_prompts,
        "randomization": list(schedules), "randomization_stride (SmolLM2)": a.stride, "n_random": 5,
        "roar_k": 1, "roar_config": roar_config or "defaults", "seed": 0, "quick": a.quick,
        "command": "python scripts/make_validation_doc.py " + " ".join(sys.argv[1:]),
        "mechattr_commit": _commit(),
        "mechattr_imported_from": str(Path(ma.__file__).resolve().parent),
    }
    parts = [
        "# Validation numbers",
        "",
        "Generated by `scripts/make_validation_doc.py` (do not edit by hand). What each check computes "
        "and its criterion: see the module docstrings in `mechattr/validation/` and the summary below.",
        "",
        "Sections: SmolLM2-135M (every registered method but exact Shapley, 9 prompts of 10-21 tokens); "
        f"[{RULE_TITLE}](#{_slug(RULE_TITLE)}) (issue #17's target, read off the SmolLM2 section); the zoo "
        "tasks (every method, with ground truth); Jain & Wallace's attention checks (written by "
        "`scripts/make_attention_doc.py`, what they compute: [attention checks](validation-attention.md)).",
        "",
        "- **randomization**: Adebayo et al. 2018, cascading (and, on the zoo, independent) "
        "re-initialisation of a copy; value = max(Spearman, Spearman of |scores|) to the original after "
        "full randomization. On SmolLM2 only the fully randomized end point of the cascading schedule "
        "is measured, and not for the costly sampling/path methods (see that section's settings).",
        "- **data_randomization**: same similarity to the zoo model's randomized-label twin.",
        "- **completeness**: max relative error |Σ scores − (f(x) − f(b))| / |f(x) − f(b)|.",
        "- **perturbation**: deletion AOPC (Samek et al. 2017); a PASS beats random orderings (mean + 1 std) "
        "and every content-blind control: `frequency`, `position` (a leave-one-out position prior: positions "
        "ranked by the other prompts' mean single-token ablation effect) and `recency` (latest tokens first).",
        "- comprehensiveness / sufficiency: mechattr's variant in target units (log-prob) averaged over "
        "`ks` = 1, 3, 5 tokens, 10 %, 20 %; eraser_comprehensiveness / eraser_sufficiency: ERASER as "
        "DeYoung et al. 2020 define it, target-token probability, mean over bins of 1, 5, 10, 20, 50 % "
        "of the tokens (no criterion).",
        "- **agreement**: mean Spearman with the other methods (no criterion).",
        "- **ablation**: mean Spearman of score vs single-token ablation effect; a PASS is above 0 and above "
        "the same Spearman of the `frequency`, `position` and `recency` controls.",
        "- **roar**: accuracy drop after retraining with the top-k tokens masked vs k random ones "
        "(mean of the random drops + max(2 std, binomial s.e.)).",
        "- **roar** with `roar_mode=\"sweep\"` (not run here: minutes per method): Hooker et al. 2019's protocol, "
        "ROAR and KAR at 10/30/50/70/90 % of the tokens, 3 retrainings per point; verdict on the mean ROAR "
        "accuracy gap to random > 2 s.e., KAR reported.",
        "- **ground_truth**: MRR of the planted tokens (mechattr.groundtruth) vs a random ranking; "
        "registered methods and user callables alike.",
        "- Layered methods (the attention family, value zeroing, token x head) are checked on their "
        "final-layer token scores, heads summed, as `ma.validate` does.",
        "",
        "The frequency baseline ranks tokens rarest-first by token id (BPE merge-rank proxy).",
        "",
        "Each section lists the settings it was computed with (a 2-core CPU machine).",
        "",
    ]
    import torch

    settings["torch_threads"] = torch.get_num_threads()
    settings_md = "\nSettings:\n\n```json\n" + json.dumps(settings, indent=2) + "\n```\n"

    # the LM first in the doc; computed last (the zoo is cheaper)
    sections: dict[str, str] = {}

    def write(done: bool) -> None:
        computed = [k for k in sections if k != RULE_TITLE]
        tail = [(f"_The last run took {time.time() - t0:.0f} s._\n" if computed else
                 "_The last pass recomputed no section (it rewrote the header and the #17 section from the saved "
                 "SmolLM2 report); each section's settings say how and when it was computed._\n")] if done else ["_Run in progress or interrupted: sections above are complete._\n"]
        # --merge re-reads the doc at every write, so two runs writing to it in turn keep each other's sections
        merged = {**(old_sections(a.out) if a.merge else {}), **sections}
        order = sorted(merged, key=section_order)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(parts + [merged[k].rstrip("\n") + "\n" for k in order] + tail))

    from mechattr.zoo.tasks import get_task

    for task in a.zoo:
        zm = ma.load_model(f"zoo:{task}")
        exs = get_task(task).examples(a.prompts, seed=123)
        rep = ma.validate(
            zm, [e.prompt for e in exs], target=None, methods=methods, checks="all", seed=0,
            n_random=5, roar_k=1, roar_config=roar_config or None, randomization=schedules,
            method_params=method_params,
        )
        sections[f"zoo:{task}"] = section(f"zoo:{task}", rep, "Target: the model's own prediction (greedy next token).") + settings_md
        write(False)
        print(f"zoo:{task} done at {time.time() - t0:.0f} s", flush=True)

    if a.rule_summary:
        sections[RULE_TITLE] = rule_section(a.rule_summary, a.bench_json)
    if not a.skip_smollm:
        note = ""
        try:
            lm = ma.load_model("smollm2-135m")
            name = "SmolLM2-135M"
        except Exception as e:  # the doc says which model the numbers are for
            lm = ma.load_model("tiny-gpt2")
            name = "tiny-gpt2 (SmolLM2 unavailable)"
            note = f"SmolLM2 could not be loaded here ({e}); these numbers are for the tiny random model."
        lm_methods = [m for m in methods if m not in LM_EXCLUDE]
        lm_params = {**{k: v for k, v in LM_PARAMS.items() if k in lm_methods}, **method_params}
        lm_sched = LM_RANDOMIZATION if not a.quick else schedules
        prompts = LM_PROMPTS[: a.lm_prompts]
        # Two runs, merged: the first (every check) holds the rule-based methods, IG and the cheap
        # ones, so #17's answer is written first; the second holds the costly ones without the
        # randomization check (LM_NO_RANDOMIZATION). The doc is rewritten after each run.
        first = [m for m in lm_methods if m not in LM_NO_RANDOMIZATION]
        runs = [r for r in (first, [m for m in lm_methods if m in LM_NO_RANDOMIZATION]) if r]
        reps = []
        for i, run in enumerate(runs):
            # named checks must run, so the second run names only those a non-zoo model has
            checks = "all" if i == 0 or a.quick else LM_RUN2_CHECKS
            reps.append(ma.validate(
                lm, prompts, methods=run, checks=checks, seed=0,
                randomization_stride=LM_STRIDE, randomization=lm_sched, n_random=5,
                method_params={k: v for k, v in lm_params.items() if k in run},
            ))
            rep = merge_reports(reps)
            lm_settings = {**settings, "methods": lm_methods, "method_params": lm_params,
                           "runs": runs[: i + 1], "randomization not run for": [m for r in runs[1: i + 1] for m in r],
                           "left_out": {k: v for k, v in LM_EXCLUDE.items() if k in methods},
                           "randomization": list(lm_sched), "randomization_stride": LM_STRIDE,
                           "prompts": len(prompts), "uptime_before": uptime0, "uptime_after": _uptime()}
            for k in ("lm_prompts", "randomization_stride (SmolLM2)"):
                lm_settings.pop(k, None)
            plist = "Prompts (the target is the model's own greedy next token; why each is there: `LM_PROMPTS` in the script):\n\n" + "\n".join(
                f"{j}. `{q}` → `{t[0] if t else ''}`" for j, (q, t) in enumerate(zip(rep.meta["prompts"], rep.meta["targets"])))
            pending = "" if i == len(runs) - 1 else f"\n\n_Run {i + 1} of {len(runs)} done; methods still to come: {', '.join(m for r in runs[i + 1:] for m in r)}._"
            sections["lm"] = (section(name, rep, (note + "\n\n" if note else "") + plist + pending)
                              + "\nSettings:\n\n```json\n" + json.dumps(lm_settings, indent=2) + "\n```\n")
            if a.json_dir:
                a.json_dir.mkdir(parents=True, exist_ok=True)
                (a.json_dir / "smollm2.json").write_text(rep.to_json())
                sections[RULE_TITLE] = rule_section(a.json_dir / "smollm2.json", a.bench_json)
            write(False)
            print(f"{name} run {i + 1}/{len(runs)} done at {time.time() - t0:.0f} s", flush=True)
    write(True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
