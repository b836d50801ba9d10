"""``validate``: run the sanity and faithfulness checks on a model, prompts and methods."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Sequence

import torch

from ..tl.adapter import tl_version
from ..errors import InputError, MechattrError, suggest
from ..progress import progress
from . import ablation, agreement, attention_checks, completeness, perturbation_curves, randomization, roar, roar_sweep, zoo_checks
from ._context import VContext, check_options, method_specs, resolve_items
from ._result import CheckResult
from .report import ValidationReport

CHECKS: dict[str, Callable[[VContext], CheckResult]] = {
    "randomization": randomization.run,
    "data_randomization": zoo_checks.run_data_randomization,
    "completeness": completeness.run,
    "perturbation": perturbation_curves.run,
    "agreement": agreement.run,
    "ablation": ablation.run,
    "roar": roar_sweep.run,
    "ground_truth": zoo_checks.run_ground_truth,
    # Jain & Wallace (2019): measurements of the model's attention, no pass/fail (attention_checks.py).
    "attention_correlation": attention_checks.run_correlation,
    "attention_permutation": attention_checks.run_permutation,
    "attention_adversarial": attention_checks.run_adversarial,
}
# Checks run only when named: they measure the model's attention, not the methods, and the
# adversarial search costs a forward and backward per step, layer and prompt.
OPT_IN = ("attention_correlation", "attention_permutation", "attention_adversarial")
# Checks that need a zoo model (or a twin / task given explicitly). Under checks="all" they are
# reported as not run, with the reason, when their inputs are missing; named explicitly they raise.
NEEDS_ZOO = ("data_randomization", "roar", "ground_truth")
DEFAULT_METHODS = ("integrated_gradients", "input_x_gradient", "saliency")


def _check_list(checks: Any) -> tuple[list[str], bool]:
    if checks == "all" or checks is None:
        return [c for c in CHECKS if c not in OPT_IN], True
    if isinstance(checks, str):
        checks = [checks]
    out = []
    for c in checks:
        if c not in CHECKS:
            raise InputError(f"Unknown check {c!r}.{suggest(str(c), list(CHECKS))} Checks: {list(CHECKS)}.")
        if c not in out:
            out.append(c)
    if not out:
        raise InputError(f"Give at least one check, or checks='all'. Checks: {list(CHECKS)}.")
    return out, False


@contextlib.contextmanager
def _silenced(quiet: bool) -> Any:
    """quiet=True also silences the bars of the methods validate() calls, which take no quiet
    argument: they honour MECHATTR_QUIET, set for the duration of the call."""
    if not quiet:
        yield
        return
    old = os.environ.get("MECHATTR_QUIET")
    os.environ["MECHATTR_QUIET"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MECHATTR_QUIET", None)
        else:
            os.environ["MECHATTR_QUIET"] = old


def _run_checks(
    vc: VContext, names: list[str], all_checks: bool, results: dict[str, CheckResult], timings: dict[str, float]
) -> None:
    for name in progress(names, desc="validate", quiet=vc.quiet):
        t0 = time.perf_counter()
        if all_checks and name in NEEDS_ZOO:
            try:
                results[name] = CHECKS[name](vc)
            except MechattrError as e:
                results[name] = CheckResult(name, unavailable=str(e))
        else:
            results[name] = CHECKS[name](vc)
        timings[name] = round(time.perf_counter() - t0, 2)


def validate(
    model: Any,
    prompts: str | Sequence[str],
    target: Any = None,
    methods: Any = DEFAULT_METHODS,
    checks: str | Sequence[str] = "all",
    seed: int = 0,
    html_path: str | os.PathLike | None = None,
    quiet: bool = False,
    **options: Any,
) -> ValidationReport:
    """Check attribution methods on ``model`` and ``prompts``; returns a :class:`ValidationReport`.

    Args:
        model: a TransformerLens model (never modified: randomization works on a deep copy).
        prompts: a prompt or a list of prompts.
        target: what is explained, in any form :func:`mechattr.attribute` accepts (``None``: the
            model's greedy next token). Every check re-evaluates exactly this target.
        methods: registered names, callables ``fn(ctx, **params) -> MethodOutput``, ``(name,
            params)`` or ``(label, callable)`` pairs.
        checks: ``"all"`` or a list from ``randomization``, ``data_randomization``,
            ``completeness``, ``perturbation``, ``agreement``, ``ablation``, ``roar``,
            ``ground_truth``; and, only when named (not in ``"all"``), Jain & Wallace's
            ``attention_correlation``, ``attention_permutation``, ``attention_adversarial``.
        seed: seeds every random choice (methods, random orderings, re-initialisations,
            plausible replacements, ROAR); the same seed gives identical numbers.
        html_path: also write the offline HTML report there.
        quiet: no progress bars (on stderr: per check, randomization step, prompt, ROAR retraining,
            and the methods' own batch loops). Also off under pytest or with ``MECHATTR_QUIET=1``.
        **options: ``threshold`` (0.5), ``top_k`` (3), ``randomization`` (modes),
            ``randomization_stride`` (1), ``twin`` (model), ``completeness_tol`` (0.05),
            ``replacement`` ('auto': unk if distinct from BOS/EOS, else zero; 'delete', 'pad',
            'zero', 'mean', 'plausible'), ``ks`` ((1, 3, 5, 0.1, 0.2)), ``n_random`` (5),
            ``counts`` (token frequency table), ``margin`` (1.0), ``ablation_min_corr`` (0.0),
            ``roar_task``, ``roar_k`` (1), ``roar_config`` (dict), ``roar_mode`` ('lite', or
            'sweep': ROAR and KAR over ``roar_fractions`` (0.1 ... 0.9) with ``roar_repeats`` (3)
            retrainings per point, Hooker et al. 2019), ``method_params`` ({name:
            params}), ``memory_mb``, ``batch_size``, ``attribute_bos``, the attention checks'
            ``attention_layers`` (None: all), ``n_permutations`` (20), ``adversarial_epsilon``
            (0.01), ``adversarial_steps`` (60), ``adversarial_lr`` (0.1), and the target options
            ``contrast``, ``kind``, ``position``, ``prepend_bos``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}.")
    opts = check_options(options)
    names, all_checks = _check_list(checks)
    specs = method_specs(methods, opts["method_params"])
    adapter, items = resolve_items(model, prompts, target, opts)
    vc = VContext(model, adapter, items, specs, seed, opts, target, quiet=bool(quiet))
    results: dict[str, CheckResult] = {}
    timings: dict[str, float] = {}
    with _silenced(quiet):
        _run_checks(vc, names, all_checks, results, timings)
    meta = {
        "model": adapter.name,
        "prompts": [it.prompt for it in items],
        "targets": [list(it.plan.labels) for it in items],
        "target": items[0].plan.description,
        "methods": [m.label for m in specs],
        "method_params": {m.label: m.params for m in specs},
        "seed": seed,
        "options": {k: v for k, v in opts.items() if k not in ("twin", "counts")},
        "transformer_lens": tl_version(),
        "torch": torch.__version__,
        "seconds": timings,
    }
    report = ValidationReport([m.label for m in specs], results, meta)
    if html_path is not None:
        report.to_html(html_path)
    return report
