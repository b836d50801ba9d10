"""Checks that need the zoo: data randomization (check 2) and ground truth (check 8).

Data randomization (Adebayo et al. 2018): the same architecture trained on labels shuffled across
examples has learned no input -> answer relation, so a faithful explanation of it must differ from
the explanation of the properly trained model. The twin is ``twin=`` (any model with the same
tokenizer) or, for a zoo model ``zoo:TASK``, ``zoo:TASK-random``. Criterion as for parameter
randomization: Spearman (signed and of |scores|) below ``threshold``.
"""

from __future__ import annotations

from typing import Any

from ..tl.adapter import ModelAdapter, as_adapter
from ..errors import ModelError
from ..progress import progress
from ._context import VContext
from ._result import CheckResult, Verdict
from .randomization import similarity
from .stats import nanmean


def zoo_name(vc: VContext) -> str | None:
    name = str(vc.adapter.name or "")
    return name if name.startswith("zoo:") else None


def load_twin(vc: VContext) -> Any:
    twin = vc.options["twin"]
    if twin is not None:
        if isinstance(twin, str):
            from ..tl.loading import load_model

            return load_model(twin)
        return twin
    name = zoo_name(vc)
    if name is None:
        raise ModelError(
            "The data-randomization check compares the model with a twin trained on shuffled labels. "
            f"{vc.adapter.name!r} is not a zoo model: pass twin=<model trained on randomized labels>, "
            "or validate a zoo model (mechattr.load_model('zoo:agreement'))."
        )
    from ..tl.loading import load_model

    try:
        return load_model(name + "-random")
    except Exception as e:
        raise ModelError(
            f"Could not load the randomized-label twin {name + '-random'!r} ({e}). "
            "Build the zoo (python -m mechattr.zoo.train TASK) or pass twin=."
        ) from e


def run_data_randomization(vc: VContext) -> CheckResult:
    res = CheckResult("data_randomization")
    twin = load_twin(vc)
    t_adapter = as_adapter(twin, vc.adapter.prepend_bos)
    if t_adapter is vc.adapter or twin is vc.model:
        raise ModelError("The twin is the model itself; pass the model trained on randomized labels.")
    if t_adapter.tokenizer.get_vocab() != vc.adapter.tokenizer.get_vocab():
        raise ModelError("The twin model uses a different tokenizer; the two must share one.")
    twin_adapter = ModelAdapter(twin, name=t_adapter.name, prepend_bos=vc.adapter.prepend_bos)
    res.notes.append(f"twin: {twin_adapter.name}")
    thr = float(vc.options["threshold"])
    for m in progress(vc.methods, desc="data randomization (methods)", quiet=vc.quiet):
        sims: dict[str, list[float]] = {}
        for item in vc.items:
            s = similarity(vc.scores(item, m), vc.scores(item, m, adapter=twin_adapter), item.free.cpu(), vc.options["top_k"])
            for k, v in s.items():
                res.add(m.label, k, v, prompt=item.index)
                sims.setdefault(k, []).append(v)
        f = {k: nanmean(v) for k, v in sims.items()}
        for k, v in f.items():
            res.add(m.label, "mean_" + k, v)
        worst = max(f["spearman"], f["spearman_abs"])
        ok = bool(worst == worst and worst < thr)
        res.verdicts[m.label] = Verdict(worst, ok, thr, f"Spearman (signed and |.|) to the randomized-label twin < {thr}")
    return res


def run_ground_truth(vc: VContext) -> CheckResult:
    res = CheckResult("ground_truth")
    name = zoo_name(vc)
    if name is None:
        raise ModelError(
            f"Ground-truth scores exist only for zoo models (planted rules); {vc.adapter.name!r} is not one. "
            "Validate mechattr.load_model('zoo:TASK') for this check."
        )
    try:
        from .. import groundtruth
    except ImportError as e:
        raise ModelError(
            "mechattr.groundtruth is not installed in this version, so the ground-truth check cannot run."
        ) from e
    task = name[len("zoo:"):].removesuffix("-random")
    n = int(vc.options["ground_truth_n"])
    res.notes.append(f"zoo task {task}, {n} examples, seed {vc.seed} (mechattr.groundtruth.score)")
    for m in progress(vc.methods, desc="ground truth (methods)", quiet=vc.quiet):
        out = groundtruth.score(vc.model, m.name if m.fn is None else m.fn, task, n=n, seed=vc.seed, params=dict(m.params))
        for k in ("top1", "mrr", "mass", "random_top1", "random_mrr", "random_mass"):
            res.add(m.label, k, float(out[k]))
        res.verdicts[m.label] = Verdict(
            float(out["mrr"]), bool(out["mrr"] > out["random_mrr"]), float(out["random_mrr"]),
            "MRR of the planted tokens > MRR of a random ranking",
            f"top1 {out['top1']:.3f} (random {out['random_top1']:.3f}), mass {out['mass']:.3f} (random {out['random_mass']:.3f})",
        )
    return res
