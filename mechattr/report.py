"""``ma.report``: one standalone HTML file that explains one prediction with several methods.

The page holds the prompt and target, each method's token heatmap (and the per-layer view for
layered results), all methods side by side, the agreement matrix (Spearman between the methods'
token scores), optionally the validation checks (deletion/insertion curves, attribution vs
ablation, summary table) and every parameter of the run. It opens with no network: the circuitsvis
bundle is inlined once (see :mod:`mechattr.display`), curves are inline SVG, figures are PNG data
URLs, and a Content-Security-Policy forbids the page from fetching anything.

>>> ma.report(model, "The capital of France is", target=" Paris",
...           methods=["ig", "input_x_gradient", "saliency"], path="paris.html", validate=True)
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .display import CSP, matrix_table, with_csp
from .errors import InputError
from .options import RUN_OPTIONS

DEFAULT_METHODS = ("integrated_gradients", "input_x_gradient", "saliency")
DEFAULT_CHECKS = ("completeness", "perturbation", "agreement", "ablation")

# Options of ma.attribute that define the target and the batching; passed to every method and to
# validation alike, so the checks re-evaluate exactly what was attributed.
_SHARED = tuple(n for n in RUN_OPTIONS if n != "seed")


def _method_list(methods: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, method name, params) for names or (name, params) pairs."""
    from .registry import get_method

    if isinstance(methods, (str, tuple)):
        methods = [methods]
    out: list[tuple[str, str, dict[str, Any]]] = []
    for m in methods or []:
        params: dict[str, Any] = {}
        if isinstance(m, tuple):
            if len(m) != 2 or not isinstance(m[0], str) or not isinstance(m[1], dict):
                raise InputError(f"A method entry is a name or (name, params_dict); got {m!r}.")
            m, params = m
        if not isinstance(m, str):
            raise InputError(f"report() takes registered method names (or (name, params)); got {type(m).__name__}.")
        name = get_method(m).name
        label = name if not params else f"{name} {json.dumps(params, sort_keys=True, default=str)}"
        out.append((label, name, dict(params)))
    if not out:
        raise InputError("Give at least one method, e.g. methods=['ig', 'input_x_gradient'].")
    labels = [lab for lab, _, _ in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise InputError(f"Methods {dup} appear twice with the same parameters; list each once.")
    return out


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _kv(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_esc(k)}</th><td><code>{_esc(json.dumps(v, default=str) if not isinstance(v, str) else v)}</code></td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def _png(fig: Any, alt: str) -> str:
    from .plots import to_png_base64

    return f'<p><img alt="{_esc(alt)}" style="max-width:100%" src="data:image/png;base64,{to_png_base64(fig)}"></p>'


def _have_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def report(
    model: Any,
    text: str,
    target: Any = None,
    methods: Any = DEFAULT_METHODS,
    path: str | os.PathLike | None = None,
    *,
    validate: bool = False,
    checks: Sequence[str] = DEFAULT_CHECKS,
    title: str | None = None,
    figures: bool | None = None,
    seed: int = 0,
    quiet: bool = True,
    validation_options: dict[str, Any] | None = None,
    baselines: Sequence[Any] | None = None,
    baseline_params: dict[str, Any] | None = None,
    **options: Any,
) -> str:
    """Attribute ``model``'s output on ``text`` with several methods and write one offline HTML page.

    Args:
        model: a loaded TransformerLens model (never modified).
        text: the prompt (one string).
        target: what to explain, in any form :func:`mechattr.attribute` accepts (``None``: the
            model's own next token).
        methods: method names or aliases, or ``(name, params)`` pairs.
        path: where to write the page (the HTML text is returned either way).
        validate: also run :func:`mechattr.validate` with ``checks`` on the same target and add
            its summary table, deletion/insertion curves and ablation scatter.
        checks: the validation checks to run when ``validate`` is true.
        title: the page title (default: the prompt).
        figures: add matplotlib figures (layer heatmaps, agreement, curves) as inline PNG;
            ``None``: when matplotlib is installed.
        seed: for stochastic methods and validation.
        quiet: no progress output.
        validation_options: extra options for :func:`mechattr.validate` (``ks``, ``n_random``...).
        baselines: also add a baseline-sensitivity section (:func:`mechattr.baseline_sensitivity`
            of integrated gradients under these baselines, e.g. ``["zero", "pad", "mean"]``).
        baseline_params: parameters for that run (``method``, ``n_steps``, ``rule``, ``top_k``...).
        **options: target and batching options shared by all methods (``contrast``, ``kind``,
            ``position``, ``prepend_bos``, ``attribute_bos``, ``memory_mb``, ``batch_size``).

    Returns:
        The HTML text of the page.
    """
    from .api import attribute
    from .display import compare, page, views
    from .plots import rank_agreement

    if not isinstance(text, str):
        raise InputError("report() explains one prompt: give text as a single string.")
    unknown = sorted(set(options) - set(_SHARED))
    if unknown:
        raise InputError(f"report() got unknown options {unknown}; it accepts {list(_SHARED)}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InputError(f"seed must be an int, got {seed!r}.")
    specs = _method_list(methods)
    figures = _have_matplotlib() if figures is None else bool(figures)
    if figures and not _have_matplotlib():
        raise ImportError("report(figures=True) needs matplotlib: pip install matplotlib")

    t_start = time.perf_counter()
    results = []
    seconds: dict[str, float] = {}
    for label, name, params in specs:
        t0 = time.perf_counter()
        res = attribute(model, text, target, method=name, seed=seed, quiet=quiet, **options, **params)
        seconds[label] = round(time.perf_counter() - t0, 3)
        results.append(res)
    labels = [lab for lab, _, _ in specs]
    first = results[0]

    sections: list[tuple[str, str, list[tuple[str, Any]]]] = []
    intro = {
        "model": first.model_name,
        "prompt": text,
        "target": first.target_description,
        "target labels": first.targets,
        "tokens": first.tokens,
        "methods": labels,
    }
    sections.append(("Prompt and target", _kv(intro), []))

    sections.append(
        ("All methods side by side", "<p>Token scores of every method for the first target; choose a method.</p>",
         [("methods side by side", compare(results, labels=labels))])
    )

    for label, res in zip(labels, results):
        top = res.top_k(min(5, len(res.tokens)), by="abs")
        body = "<p>Top tokens by |score|: " + ", ".join(
            f"<code>{_esc(repr(t))}</code> {s:+.4g}" for _, t, s in top
        ) + "</p>"
        diag = {k: v for k, v in res.diagnostics.items() if isinstance(v, (int, float, str, bool)) or v is None}
        if diag:
            body += "<details><summary>diagnostics</summary>" + _kv(diag) + "</details>"
        if figures and "layer" in res.dims:
            from .plots import layer_heatmap

            body += _png(layer_heatmap(res), f"{label} by layer")
        sections.append((label, body, views(res)))

    agree = rank_agreement(results)
    agree_html = (
        "<p>Spearman rank correlation between the methods' token scores (first target; tokens every "
        "method scores exactly 0, such as a fixed BOS, left out). Agreement is descriptive: methods "
        "can agree and all be wrong.</p>" + matrix_table(agree, labels)
    )
    if figures and len(labels) > 1:
        from .plots import agreement_matrix

        agree_html += _png(agreement_matrix(agree, labels), "agreement matrix")
    sections.append(("Agreement between methods", agree_html, []))

    vmeta: dict[str, Any] | None = None
    if validate:
        vhtml, vmeta = _validation_sections(model, text, target, specs, checks, seed, options,
                                            validation_options or {}, figures, results)
        sections.extend(vhtml)

    sens_meta: dict[str, Any] | None = None
    if baselines is not None:
        from .sensitivity import baseline_sensitivity

        bp = dict(baseline_params or {})
        sens = baseline_sensitivity(model, text, target, baselines=baselines, seed=seed, quiet=quiet,
                                    **options, **bp)
        sections.extend(sens.sections())
        sens_meta = {"method": sens.method, "params": sens.params, "baselines": [r.label for r in sens.rows],
                     "stable": sens.verdict["stable"]}

    from .tl.adapter import tl_version

    run = {
        "seed": seed,
        "options": options,
        "methods": {lab: {"method": r.method, "params": r.params} for lab, r in zip(labels, results)},
        "seconds per method": seconds,
        "seconds total": round(time.perf_counter() - t_start, 3),
        "transformer_lens": tl_version(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if vmeta is not None:
        run["validation"] = vmeta
    if sens_meta is not None:
        run["baseline sensitivity"] = sens_meta
    sections.append(("Run parameters", _kv(run), []))

    out = with_csp(page(title or f"mechattr report — {text!r}", sections))
    if path is not None:
        from ._io import atomic_write

        atomic_write(Path(path), out.encode("utf-8"))
    return out


def _validation_sections(
    model: Any, text: str, target: Any, specs: list[tuple[str, str, dict[str, Any]]], checks: Sequence[str],
    seed: int, options: dict[str, Any], vopts: dict[str, Any], figures: bool, results: list[Any],
) -> tuple[list[tuple[str, str, list[Any]]], dict[str, Any]]:
    try:
        from .validation import validate
        from .validation.report import _check_body, _table
    except ImportError as e:  # pragma: no cover - validation ships with mechattr
        return [("Validation", f"<p>Validation unavailable: {_esc(e)}</p>", [])], {}

    # validate() labels methods by registered name; params go through method_params.
    names = [name for _, name, _ in specs]
    if len(set(names)) != len(names):
        raise InputError("validate=True needs each method once (validation labels methods by name).")
    method_params = {name: params for _, name, params in specs if params}
    target_opts = {k: v for k, v in options.items() if k in _SHARED}
    rep = validate(
        model, text, target, methods=names, checks=list(checks), seed=seed,
        method_params=method_params, **target_opts, **vopts,
    )
    out: list[tuple[str, str, list[Any]]] = []
    crit = "".join(f"<li><b>{_esc(k)}</b>: {_esc(v)}</li>" for k, v in rep.criteria().items())
    out.append(("Validation summary", _table(rep.summary_rows()) + (f"<ul>{crit}</ul>" if crit else ""), []))
    for name, c in rep.checks.items():
        body = ""
        if c.unavailable:
            body += f"<p><b>Not run:</b> {_esc(c.unavailable)}</p>"
        body += "".join(f"<p>{_esc(n)}</p>" for n in c.notes)
        body += _check_body(c)
        if figures and name == "perturbation" and "mean_curves" in c.data:
            from .plots import deletion_curves

            mc = c.data["mean_curves"]
            for kind in ("deletion", "insertion"):
                series = {lab: d[kind] for lab, d in mc.items() if kind in d}
                if series:
                    fig = deletion_curves(series, title=f"{kind} curves", )
                    if kind == "insertion":
                        fig.axes[0].set_xlabel("fraction of tokens restored")
                    body += _png(fig, f"{kind} curves")
        if figures and name == "ablation" and "scatter" in c.data:
            from .plots import ablation_scatter

            for lab, pts in c.data["scatter"].items():
                if pts:
                    xs, ys = zip(*pts)
                    body += _png(ablation_scatter(list(xs), list(ys), title=lab), f"{lab} vs ablation")
        out.append((f"Validation: {name}", body, []))
    return out, rep.meta
