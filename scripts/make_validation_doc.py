"""Write docs/validation.md: mechattr.validate numbers for every registered method on SmolLM2
(falls back to the tiny random model, and says so, when SmolLM2 cannot be loaded) and on the zoo.

    python scripts/make_validation_doc.py [--out docs/validation.md] [--methods a b ...]
        [--prompts N] [--stride S] [--zoo agreement recall] [--skip-smollm] [--quick]

``--quick`` (a CPU run of about 20 minutes): no sampling/exhaustive perturbation methods and no
discretized IG (a kNN graph over SmolLM2's 49k-token vocabulary), fewer IG/SmoothGrad/GradientSHAP
samples, the cascading randomization schedule only, and a smaller ROAR-lite set. The doc
records the settings it was produced with. The doc is rewritten after every section, so an
interrupted run still leaves the finished sections.

Numbers are whatever they turn out to be; the script never edits them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import mechattr as ma

LM_PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "The keys to the old cabinet",
    "One, two, three, four,",
]
# Methods too slow for a CPU run on a 135M model with many prompts and randomization steps.
SLOW = {"shapley", "kernel_shap", "lime", "shapley_sampling", "reagent",
        "discretized_integrated_gradients", "uniform_discretized_integrated_gradients"}
QUICK_PARAMS = {"integrated_gradients": {"n_steps": 16}, "smoothgrad": {"n_samples": 8}, "gradient_shap": {"n_samples": 8}}
QUICK_ROAR = {"n_train": 160, "n_test": 128, "n_random": 3, "steps": 120}


def method_list(names: list[str] | None, quick: bool) -> list[str]:
    if names:
        return names
    out = [m.name for m in ma.list_methods() if m.family != "test" and not m.layered]
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
    if "perturbation" in rep.checks and not rep.checks["perturbation"].unavailable:
        s = rep.checks["perturbation"].data["summary"]
        keys = ["aopc", "deletion_auc_norm", "insertion_auc_norm", "comprehensiveness", "sufficiency"]
        lines += ["Perturbation summary (means over prompts; random = mean over seeds, then its std):", ""]
        lines += ["| ordering | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for lab, v in s.items():
            lines.append(f"| {lab} | " + " | ".join(f"{v[k]:.4g}" for k in keys) + " |")
        lines.append("")
    if "agreement" in rep.checks and not rep.checks["agreement"].unavailable:
        d = rep.checks["agreement"].data
        lines += ["Agreement (mean Spearman):", "", "| | " + " | ".join(d["labels"]) + " |", "|---|" + "---|" * len(d["labels"])]
        for a, row in zip(d["labels"], d["matrices"]["spearman"]):
            lines.append(f"| {a} | " + " | ".join(f"{x:.2f}" for x in row) + " |")
        lines.append("")
    if "roar" in rep.checks and rep.checks["roar"].data.get("table"):
        lines += ["ROAR-lite:", "", "| masking | k | accuracy | drop |", "|---|---|---|---|"]
        for r in rep.checks["roar"].data["table"]:
            lines.append(f"| {r['masking']} | {r['k']} | {r['accuracy']:.3f} | {r['drop']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/validation.md"))
    p.add_argument("--methods", nargs="*")
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--stride", type=int, default=6, help="randomization: measure every S-th layer group")
    p.add_argument("--zoo", nargs="*", default=["agreement", "recall"])
    p.add_argument("--skip-smollm", action="store_true")
    p.add_argument("--quick", action="store_true", help="fewer/cheaper methods and samples (see the docstring)")
    a = p.parse_args()
    t0 = time.time()
    methods = method_list(a.methods, a.quick)
    method_params = {k: v for k, v in QUICK_PARAMS.items() if k in methods} if a.quick else {}
    schedules = ("cascading",) if a.quick else ("cascading", "independent")
    roar_config = dict(QUICK_ROAR) if a.quick else {}
    settings = {
        "methods": methods, "method_params": method_params, "prompts": a.prompts,
        "randomization": list(schedules), "randomization_stride (SmolLM2)": a.stride, "n_random": 5,
        "roar_k": 1, "roar_config": roar_config or "defaults", "seed": 0, "quick": a.quick,
        "command": "python scripts/make_validation_doc.py " + " ".join(sys.argv[1:]),
    }
    parts = [
        "# Validation numbers",
        "",
        "Generated by `scripts/make_validation_doc.py` (do not edit by hand). What each check computes "
        "and its criterion: see the module docstrings in `mechattr/validation/` and the summary below.",
        "",
        "- **randomization**: Adebayo et al. 2018, cascading (and, without --quick, independent) "
        "re-initialisation of a copy; value = max(Spearman, Spearman of |scores|) to the original after "
        "full randomization.",
        "- **data_randomization**: same similarity to the zoo model's randomized-label twin.",
        "- **completeness**: max relative error |Σ scores − (f(x) − f(b))| / |f(x) − f(b)|.",
        "- **perturbation**: deletion AOPC (Samek et al. 2017) vs random orderings (mean + 1 std).",
        "- **agreement**: mean Spearman with the other methods (no criterion).",
        "- **ablation**: mean Spearman of score vs single-token ablation effect.",
        "- **roar**: accuracy drop after retraining with the top-k tokens masked vs k random ones "
        "(mean of the random drops + max(2 std, binomial s.e.)).",
        "- **ground_truth**: MRR of the planted tokens (mechattr.groundtruth) vs a random ranking.",
        "",
        "The frequency baseline ranks tokens rarest-first by token id (BPE merge-rank proxy).",
        "",
        "Settings of this run (shared 2-core CPU machine):",
        "",
        "```json",
        json.dumps(settings, indent=2),
        "```",
        "",
    ]

    sections: dict[str, str] = {}  # the LM first in the doc; computed last (the zoo is cheaper)

    def write(done: bool) -> None:
        tail = [f"_Generated in {time.time() - t0:.0f} s._\n"] if done else ["_Run in progress or interrupted: sections above are complete._\n"]
        order = sorted(sections, key=lambda k: not k.startswith("lm"))
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text("\n".join(parts + [sections[k] for k in order] + tail))

    from mechattr.zoo.tasks import get_task

    for task in a.zoo:
        zm = ma.load_model(f"zoo:{task}")
        exs = get_task(task).examples(a.prompts, seed=123)
        rep = ma.validate(
            zm, [e.prompt for e in exs], target=None, methods=methods, checks="all", seed=0,
            n_random=5, roar_k=1, roar_config=roar_config or None, randomization=schedules,
            method_params=method_params,
        )
        sections[f"zoo:{task}"] = section(f"zoo:{task}", rep, "Target: the model's own prediction (greedy next token).")
        write(False)
        print(f"zoo:{task} done at {time.time() - t0:.0f} s", flush=True)

    if not a.skip_smollm:
        note = ""
        try:
            lm = ma.load_model("smollm2-135m")
            name = "SmolLM2-135M"
        except Exception as e:  # the doc says which model the numbers are for
            lm = ma.load_model("tiny-gpt2")
            name = "tiny-gpt2 (SmolLM2 unavailable)"
            note = f"SmolLM2 could not be loaded here ({e}); these numbers are for the tiny random model."
        rep = ma.validate(
            lm, LM_PROMPTS[: a.prompts], methods=methods, checks="all", seed=0,
            randomization_stride=a.stride, randomization=schedules, n_random=5, method_params=method_params,
        )
        sections["lm"] = section(name, rep, note)
        write(False)
        print(f"{name} done at {time.time() - t0:.0f} s", flush=True)
    write(True)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
