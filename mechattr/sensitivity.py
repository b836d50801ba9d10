"""``baseline_sensitivity``: how much a path method's answer depends on its baseline.

Integrated gradients (and every method with a ``baseline`` parameter) explains f(x) - f(b): change
the reference b and the explanation changes with it (Sturmfels et al. 2020, "Visualizing the
Impact of Feature Attribution Baselines"). This module runs one method under several baselines on
the same prompt and target and reports

- one :class:`~mechattr.Attribution` per baseline, with its completeness error and the baseline
  embedding actually used;
- pairwise rank agreement of the token scores: Spearman, Kendall tau-b and top-k overlap
  (|top-k(a) ∩ top-k(b)| / k, by |score|), over the attributed tokens (a fixed BOS left out);
- a verdict (:func:`sensitivity_verdict`): the *robust* tokens, in the top-k by |score| under
  every baseline, the *baseline-dependent* ones, in the top-k under some but not all, and a
  threshold rule for the whole explanation: ``stable`` when the smallest pairwise Spearman is at
  least ``threshold`` (default 0.5) and at least one token is robust.

Baselines that do not exist for a model are *skipped rows with the reason shown*, never an
error and never a silent substitute: ``"zero"`` where the zero embedding is a degenerate point of
the model (the rule of ``baseline="auto"``, :func:`mechattr.baselines.auto_baseline`: all target
logits equal there, as in bias-free RMSNorm models such as SmolLM2), and the special-token
baselines (``pad``, ``eos``, ``bos``, ``unk``, ``mask``) where the tokenizer has no such token.
Input that cannot mean anything (an unknown name, a counterfactual prompt of another length,
fewer than two usable baselines) raises :class:`~mechattr.errors.InputError`.

>>> sens = ma.baseline_sensitivity(model, "The capital of France is", " Paris",
...     baselines=["zero", "pad", "mean", "prompt:The capital of Italy is"], n_steps=32)
>>> sens.summary(); sens.verdict["robust"]; sens.to_html("baselines.html")
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from .attribution import Attribution
from .errors import InputError, MechattrError

DEFAULT_BASELINES = ("zero", "pad", "eos", "unk", "mean", "uniform", "gaussian")
PROMPT_PREFIX = "prompt:"
METRICS = ("spearman", "kendall", "top_k_overlap")


# ----- the verdict (a pure function of the score maps, tested on both sides of its thresholds) -----


def top_k_set(scores: Float[Tensor, " n"], k: int) -> set[int]:
    """Indices of the ``k`` largest |scores|; ties go to the earlier index."""
    from .validation.stats import top_k_indices

    return set(top_k_indices(scores, k).tolist())


def sensitivity_verdict(
    maps: Float[Tensor, "n_baselines n"], top_k: int = 3, threshold: float = 0.5
) -> dict[str, Any]:
    """The verdict on token score maps (one row per baseline, attributed tokens only).

    A token is *robust* when it is among the ``top_k`` largest |scores| under every baseline,
    *baseline-dependent* when it is in the top-k under at least one baseline but not all. The
    explanation is ``stable`` when the smallest pairwise Spearman correlation between the maps
    is ``>= threshold`` and at least one token is robust; NaN correlations (a constant map)
    count as failing."""
    from .validation.stats import spearman

    if maps.ndim != 2 or maps.shape[0] < 2:
        raise InputError(f"The verdict needs at least two score maps [n_baselines, n]; got shape {tuple(maps.shape)}.")
    k = max(1, min(int(top_k), maps.shape[1]))
    sets = [top_k_set(m, k) for m in maps]
    robust = sorted(set.intersection(*sets))
    dependent = sorted(set.union(*sets) - set(robust))
    rho = spearman(maps[:, None, :], maps[None, :, :])
    off = ~torch.eye(maps.shape[0], dtype=torch.bool)
    vals = rho[off]
    min_rho = float("nan") if bool(vals.isnan().any()) else float(vals.min())
    stable = (not math.isnan(min_rho)) and min_rho >= threshold and len(robust) >= 1
    return {
        "robust": robust,
        "dependent": dependent,
        "min_spearman": min_rho,
        "threshold": float(threshold),
        "top_k": k,
        "stable": bool(stable),
        "criterion": f"stable when min pairwise Spearman >= {threshold} and >= 1 token is in the top-{k} under every baseline",
    }


# ----- the result ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineRow:
    """One baseline: its label, what it was built from, and its attribution (or why it was skipped)."""

    label: str
    spec: Any  # JSON-able description of the baseline
    attribution: Attribution | None = None
    embedding: Tensor | None = None  # [pos, d_model] the baseline embedding actually used
    skipped: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.attribution is not None


@dataclass(frozen=True)
class BaselineSensitivity:
    """What :func:`baseline_sensitivity` returns."""

    rows: list[BaselineRow]
    tokens: list[str]
    attributed: list[int]  # positions the agreement and the verdict are computed over
    method: str
    target: str
    row: int
    matrices: dict[str, Tensor]  # metric -> [n_ok, n_ok]
    verdict: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str | None = None
    model_name: str = ""

    @property
    def labels(self) -> list[str]:
        """Labels of the baselines that ran (the order of the matrices)."""
        return [r.label for r in self.rows if r.ok]

    @property
    def attributions(self) -> dict[str, Attribution]:
        return {r.label: r.attribution for r in self.rows if r.attribution is not None}

    @property
    def skipped(self) -> dict[str, str]:
        return {r.label: r.skipped for r in self.rows if r.skipped}

    @property
    def robust_tokens(self) -> list[tuple[int, str]]:
        return [(self.attributed[i], self.tokens[self.attributed[i]]) for i in self.verdict["robust"]]

    @property
    def dependent_tokens(self) -> list[tuple[int, str]]:
        return [(self.attributed[i], self.tokens[self.attributed[i]]) for i in self.verdict["dependent"]]

    def score_maps(self) -> Float[Tensor, "n_ok pos"]:
        """Token scores (target row ``self.row``, final layer) of every baseline that ran."""
        return torch.stack([a.token_scores(self.row).double() for a in self.attributions.values()])

    # ----- tables ------------------------------------------------------------------------------
    def summary_rows(self) -> list[dict[str, Any]]:
        out = []
        labels = self.labels
        k = self.verdict["top_k"]
        for r in self.rows:
            row: dict[str, Any] = {"baseline": r.label, "status": "ok" if r.ok else f"skipped: {r.skipped}"}
            if r.ok:
                a = r.attribution
                d = a.diagnostics
                fb = d.get("f_baseline")
                row["f(x)"] = d["f_input"][self.row] if "f_input" in d else float("nan")
                row["f(b)"] = fb[self.row] if fb else float("nan")
                row["sum of scores"] = float(a.token_scores(self.row).double().sum())
                row["completeness_error"] = d.get("completeness_error", float("nan"))
                row["completeness_rel"] = d.get("completeness_relative_error", float("nan"))
                top = a.top_k(k, target=self.row, by="abs")
                row[f"top-{k}"] = ", ".join(f"{t!r} {s:+.3g}" for _, t, s in top)
                i = labels.index(r.label)
                others = [float(self.matrices["spearman"][i, j]) for j in range(len(labels)) if j != i]
                row["mean spearman"] = sum(others) / len(others)
            row["note"] = r.note
            out.append(row)
        return out

    def summary(self) -> Any:
        """One row per baseline: status, f(x), f(b), completeness, top-k tokens, mean Spearman."""
        import pandas as pd

        return pd.DataFrame.from_records(self.summary_rows()).set_index("baseline")

    def to_dataframe(self) -> Any:
        """Long format: one row per (baseline, token) with score, rank by |score| and top-k flag."""
        import pandas as pd

        recs = []
        k = self.verdict["top_k"]
        robust = {p for p, _ in self.robust_tokens}
        for lab, a in self.attributions.items():
            s = a.token_scores(self.row).double()
            att = torch.tensor(self.attributed)
            order = sorted(range(len(att)), key=lambda i: (-abs(float(s[att[i]])), i))
            rank = {int(att[i]): n + 1 for n, i in enumerate(order)}
            for p, tok in enumerate(self.tokens):
                recs.append({
                    "baseline": lab, "position": p, "token": tok, "score": float(s[p]),
                    "rank": rank.get(p), "in_top_k": rank.get(p, k + 1) <= k, "robust": p in robust,
                })
        return pd.DataFrame.from_records(recs)

    def agreement(self, metric: str = "spearman") -> Any:
        """The baseline × baseline matrix of ``metric`` (spearman, kendall, top_k_overlap)."""
        import pandas as pd

        if metric not in self.matrices:
            raise InputError(f"Unknown agreement metric {metric!r}; choose one of {list(self.matrices)}.")
        return pd.DataFrame(self.matrices[metric].numpy(), index=self.labels, columns=self.labels)

    def verdict_text(self) -> str:
        v = self.verdict
        rob = ", ".join(repr(t) for _, t in self.robust_tokens) or "none"
        dep = ", ".join(repr(t) for _, t in self.dependent_tokens) or "none"
        word = "STABLE" if v["stable"] else "BASELINE-DEPENDENT"
        return (
            f"verdict: {word} (min pairwise Spearman {v['min_spearman']:.3g}, threshold {v['threshold']}); "
            f"robust top-{v['top_k']} tokens (every baseline): {rob}; baseline-dependent: {dep}"
        )

    def to_text(self) -> str:
        """The sensitivity table as plain text (what the CLI prints)."""
        lines = [
            f"model: {self.model_name}   method: {self.method}   target: {self.target}",
            f"{'baseline':<28} {'f(b)':>9} {'compl.err':>10} {'rel':>7} {'mean rho':>9}  top tokens",
        ]
        k = self.verdict["top_k"]
        for r in self.summary_rows():
            if not r["status"] == "ok":
                lines.append(f"{r['baseline'][:28]:<28} {r['status']}")
                continue
            lines.append(
                f"{r['baseline'][:28]:<28} {r['f(b)']:>9.4g} {r['completeness_error']:>10.3g} "
                f"{r['completeness_rel']:>7.2%} {r['mean spearman']:>9.3f}  {r[f'top-{k}']}"
            )
        for metric in METRICS:
            lines.append(f"{metric} between baselines:")
            labs = [x[:10] for x in self.labels]
            lines.append(" " * 12 + " ".join(f"{x:>10}" for x in labs))
            for i, a in enumerate(labs):
                lines.append(f"{a:<12}" + " ".join(f"{float(self.matrices[metric][i, j]):>10.3f}" for j in range(len(labs))))
        lines.append(self.verdict_text())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The sensitivity table, the Spearman matrix and the verdict as markdown."""
        k = self.verdict["top_k"]
        esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
        out = [f"| baseline | f(b) | completeness error | relative | mean Spearman | top-{k} by abs(score) | note |",
               "|---|---|---|---|---|---|---|"]
        for r in self.summary_rows():
            if r["status"] != "ok":
                out.append(f"| {esc(r['baseline'])} | {esc(r['status'])} | | | | | |")
                continue
            out.append(
                f"| {esc(r['baseline'])} | {r['f(b)']:.4g} | {r['completeness_error']:.3g} | "
                f"{r['completeness_rel']:.1%} | {r['mean spearman']:.2f} | {esc(r[f'top-{k}'])} | {esc(r['note'])} |"
            )
        out += ["", "Spearman between baselines:", "", "| | " + " | ".join(map(esc, self.labels)) + " |",
                "|---|" + "---|" * len(self.labels)]
        for i, a in enumerate(self.labels):
            out.append(f"| {esc(a)} | " + " | ".join(f"{float(self.matrices['spearman'][i, j]):.2f}"
                                                      for j in range(len(self.labels))) + " |")
        out += ["", f"**{esc(self.verdict_text())}**"]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (f"BaselineSensitivity(method={self.method!r}, baselines={[r.label for r in self.rows]}, "
                f"stable={self.verdict['stable']})")

    def to_dict(self) -> dict[str, Any]:
        from .attribution import _jsonable

        return _jsonable({
            "model": self.model_name, "prompt": self.prompt, "tokens": self.tokens, "target": self.target,
            "row": self.row, "method": self.method, "params": self.params, "attributed": self.attributed,
            "baselines": [
                {"label": r.label, "spec": r.spec, "skipped": r.skipped, "note": r.note,
                 "scores": r.attribution.token_scores(self.row).tolist() if r.ok else None,
                 "diagnostics": {k: v for k, v in r.attribution.diagnostics.items()
                                 if k.startswith(("completeness", "f_"))} if r.ok else None}
                for r in self.rows
            ],
            "labels": self.labels,
            "matrices": {k: v.tolist() for k, v in self.matrices.items()},
            "verdict": {**self.verdict, "robust_tokens": self.robust_tokens, "dependent_tokens": self.dependent_tokens},
        })

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from ._io import atomic_write

            atomic_write(Path(path), text.encode("utf-8"))
        return text

    # ----- displays ----------------------------------------------------------------------------
    def show(self) -> Any:
        """circuitsvis view for notebooks: the token maps of every baseline, choose one."""
        from .display import compare

        return compare(list(self.attributions.values()), target=self.row, labels=self.labels)

    def sections(self) -> list[tuple[str, str, list[tuple[str, Any]]]]:
        """(heading, html, components) sections, shared by :meth:`to_html` and ``ma.report``."""
        from .display import matrix_table

        v = self.verdict
        cls = "#e6f4ea" if v["stable"] else "#fce8e6"
        head = (
            f'<p style="background:{cls};padding:6px">{html.escape(self.verdict_text())}</p>'
            f"<p>Criterion: {html.escape(v['criterion'])}. Method <code>{html.escape(self.method)}</code>, "
            f"target {html.escape(self.target)}; agreement over the attributed tokens (a fixed BOS left out).</p>"
        )
        head += _summary_table(self.summary_rows())
        out = [("Baseline sensitivity", head, [])]
        out.append((
            "Token maps, one row per baseline",
            "<p>Each row scaled by its own largest |score| (blue positive, red negative); "
            "<b>bold</b> tokens are robust (top-k under every baseline).</p>" + self._token_matrix_html(),
            [("all baselines (choose one)", self.show())] if len(self.labels) else [],
        ))
        agree = ""
        for metric in METRICS:
            agree += f"<p>{html.escape(metric)}</p>" + matrix_table(self.matrices[metric], self.labels)
        out.append(("Agreement between baselines", agree, []))
        return out

    def _token_matrix_html(self) -> str:
        robust = {p for p, _ in self.robust_tokens}
        head = "<tr><th>baseline</th>" + "".join(
            f"<th>{'<b>' if p in robust else ''}{html.escape(repr(t))}{'</b>' if p in robust else ''}</th>"
            for p, t in enumerate(self.tokens)
        ) + "</tr>"
        body = ""
        for lab, a in self.attributions.items():
            s = a.token_scores(self.row).double()
            m = float(s.abs().max()) or 1.0
            cells = ""
            for p in range(len(self.tokens)):
                x = float(s[p]) / m
                c = _score_color(x)
                cells += f'<td style="background:{c}">{float(s[p]):+.3g}</td>'
            body += f"<tr><th>{html.escape(lab)}</th>{cells}</tr>"
        return f'<table class="token-matrix">{head}{body}</table>'

    def to_html(self, path: str | os.PathLike | None = None, title: str | None = None) -> str:
        """A standalone page that opens offline: verdict, table, token maps, agreement matrices."""
        from .display import page
        from .display import with_csp as _with_csp

        title = title or f"mechattr baseline sensitivity — {self.prompt!r}"
        text = _with_csp(page(title, self.sections()))
        if path is not None:
            from ._io import atomic_write

            atomic_write(Path(path), text.encode("utf-8"))
        return text


def _score_color(x: float) -> str:
    a = min(1.0, abs(x))
    if x >= 0:
        return f"rgb({int(255 - 160 * a)},{int(255 - 110 * a)},255)"
    return f"rgb(255,{int(255 - 160 * a)},{int(255 - 160 * a)})"


def _summary_table(rows: list[dict[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c, "")
            s = f"{v:.4g}" if isinstance(v, float) else str(v)
            cells += f"<td>{html.escape(s)}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


# ----- the computation -------------------------------------------------------------------------


def parse_baselines(text: str) -> list[str]:
    """A CLI list ``"zero,pad,mean,prompt:The capital of Italy is"``: comma-separated names; a
    ``prompt:`` item takes the rest of the string (commas included), so give it last."""
    out: list[str] = []
    rest = text
    while rest:
        if rest.lstrip().startswith(PROMPT_PREFIX):
            out.append(rest.lstrip())
            break
        head, _, rest = rest.partition(",")
        if head.strip():
            out.append(head.strip())
    if not out:
        raise InputError("--baselines is empty; give e.g. --baselines zero,pad,mean")
    return out


def _label(spec: Any) -> str:
    if isinstance(spec, str):
        return spec
    if isinstance(spec, bool):
        raise InputError("A baseline cannot be a bool.")
    if isinstance(spec, int):
        return f"token {spec}"
    if isinstance(spec, Tensor) and spec.is_floating_point():
        return f"tensor{tuple(spec.shape)}"
    if isinstance(spec, (list, tuple, Tensor)):
        return "ids " + json.dumps(torch.as_tensor(spec).reshape(-1).tolist())
    raise InputError(f"Cannot use {type(spec).__name__} as a baseline.")


def _resolve_spec(ctx: Any, spec: Any, auto: str | None) -> tuple[Any, Any, str | None, str]:
    """(spec for the method, JSON description, reason to skip or None, note)."""
    from .baselines import NAMED_BASELINES, TOKEN_BASELINES, describe

    a = ctx.adapter
    if isinstance(spec, str):
        if spec.startswith(PROMPT_PREFIX):
            text = spec[len(PROMPT_PREFIX):]
            toks = a.tokenize(text)
            if toks.shape[-1] != ctx.n_pos:
                raise InputError(
                    f"The counterfactual prompt {text!r} is {toks.shape[-1]} tokens "
                    f"{a.str_tokens(toks)}, the input is {ctx.n_pos} {a.str_tokens(ctx.tokens)}; "
                    "a counterfactual baseline needs the same token length (edit its words)."
                )
            ids = toks[0].tolist()
            return ids, {"prompt": text, "token_ids": ids}, None, "counterfactual prompt"
        name = spec.lower()
        if name not in NAMED_BASELINES:
            raise InputError(
                f"Unknown baseline {spec!r}; choose from {list(NAMED_BASELINES)} or "
                f"'{PROMPT_PREFIX}<text of the same token length>', a token id, or ids / an embedding."
            )
        if name == "zero" and auto is not None and auto != "zero":
            return None, name, (
                "the zero embedding is a degenerate point of this model (every target logit is equal "
                f"there; baseline='auto' picks {auto!r} instead)"
            ), ""
        if name in TOKEN_BASELINES:
            tid = a.special_token_id(name)
            if tid is None:
                return None, name, f"the tokenizer has no {name} token", ""
            same = [o for o in TOKEN_BASELINES if o != name and a.special_token_id(o) == tid]
            note = f"token id {tid}" + (f" (same token as {', '.join(same)})" if same else "")
            return name, name, None, note
        note = {"uniform": f"seeded (seed {ctx.seed})", "gaussian": f"seeded (seed {ctx.seed})"}.get(name, "")
        return name, name, None, note
    return spec, describe(spec), None, ""


def baseline_sensitivity(
    model: Any,
    text: str | Tensor,
    target: Any = None,
    *,
    contrast: Any = None,
    method: str = "integrated_gradients",
    baselines: Sequence[Any] = DEFAULT_BASELINES,
    top_k: int = 3,
    threshold: float = 0.5,
    row: int = 0,
    kind: str | None = None,
    position: int | None = None,
    prepend_bos: bool | None = None,
    attribute_bos: bool = False,
    memory_mb: float = 2048.0,
    batch_size: int | None = None,
    seed: int = 0,
    quiet: bool = True,
    **method_params: Any,
) -> BaselineSensitivity:
    """Run ``method`` once per baseline on the same prompt and target and compare the answers.

    Args:
        model: a loaded TransformerLens model (never modified).
        text: the prompt (one string or a 1-D tensor of token ids).
        target: what to explain, as for :func:`mechattr.attribute` (``None``: the greedy next token).
        contrast: a foil token (target vs foil), as for :func:`mechattr.attribute`.
        method: any registered method with a ``baseline`` parameter (``ig``, ``gradient_shap``,
            ``discretized_integrated_gradients`` ...).
        baselines: names (``zero``, ``pad``, ``eos``, ``bos``, ``unk``, ``mask``, ``mean``,
            ``uniform``, ``gaussian``), ``"prompt:<text>"`` (a counterfactual prompt of the same
            token length, e.g. ``"prompt:The capital of Italy is"``), a token id, a list of token
            ids, or an embedding tensor. A name the model cannot support is a skipped row with
            the reason (see the module docstring).
        top_k: size of the top sets (by |score|) for the overlap and the verdict.
        threshold: the smallest pairwise Spearman for the verdict ``stable``.
        row: the target row compared (a forced continuation has several).
        kind: the target's kind, as for :func:`mechattr.attribute`.
        position: the prompt position whose prediction is explained (default: the last).
        prepend_bos: override the model's BOS policy.
        attribute_bos: also attribute the BOS token (by default it is held fixed).
        memory_mb: activation memory cap per batch.
        batch_size: sequences per forward pass (overrides ``memory_mb``).
        seed: seeds the ``uniform`` and ``gaussian`` baselines and stochastic methods.
        quiet: no progress bars.
        **method_params: the method's own parameters (``n_steps``, ``rule``, ``reduce``...).
    """
    from .api import fixed_positions, resolve, run_method
    from .baselines import auto_baseline, build_baselines
    from .contract import Context
    from .registry import get_method
    from .tl.adapter import as_adapter
    from .validation.stats import kendall, spearman, top_k_intersection

    info = get_method(method)
    if "baseline" not in info.parameters():
        raise InputError(
            f"The method {info.name!r} has no baseline parameter, so its answer cannot depend on one. "
            "Use a path method: 'integrated_gradients', 'gradient_shap', 'discretized_integrated_gradients'."
        )
    if "baseline" in method_params:
        raise InputError("Give the baselines to compare as baselines=[...], not baseline=.")
    if isinstance(baselines, (str, bytes)) or not isinstance(baselines, Sequence):
        raise InputError(f"baselines must be a list, e.g. ['zero', 'pad', 'mean']; got {baselines!r}.")
    baselines = list(baselines)
    if len(baselines) < 2:
        raise InputError(f"Give at least two baselines to compare, got {len(baselines)}.")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise InputError(f"top_k must be a positive integer, got {top_k!r}.")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise InputError(f"threshold is a correlation in [-1, 1], got {threshold!r}.")
    labels = [_label(b) for b in baselines]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise InputError(f"Baselines {dup} appear twice; list each once.")

    adapter = as_adapter(model, prepend_bos)
    rows: list[BaselineRow] = []
    with adapter.guard():
        adapter, plan, prompt = resolve(
            adapter, text, target, contrast=contrast, kind=kind, position=position, prepend_bos=prepend_bos
        )
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < plan.n_rows:
            raise InputError(f"row must be a target row index in [0, {plan.n_rows}), got {row!r}.")
        fixed = fixed_positions(adapter, plan.tokens, attribute_bos)
        ctx = Context(adapter=adapter, plan=plan, memory_mb=float(memory_mb), batch_size=batch_size,
                      seed=int(seed), quiet=quiet, fixed=fixed)
        auto = auto_baseline(ctx) if any(isinstance(b, str) and b.lower() == "zero" for b in baselines) else None
        for lab, spec in zip(labels, baselines):
            used, desc, skip, note = _resolve_spec(ctx, spec, auto)
            if skip is not None:
                rows.append(BaselineRow(lab, desc, skipped=skip))
                continue
            try:
                emb = build_baselines(ctx, used)[0].detach().cpu()
            except MechattrError as e:
                raise InputError(f"Baseline {lab!r}: {e}") from e
            res = run_method(
                adapter, plan, info.name, {**method_params, "baseline": used}, attribute_bos=attribute_bos,
                memory_mb=memory_mb, batch_size=batch_size, seed=seed, quiet=quiet, prompt=prompt,
            )
            rows.append(BaselineRow(lab, desc, attribution=res, embedding=emb, note=note))
    ok = [r for r in rows if r.ok]
    if len(ok) < 2:
        why = "; ".join(f"{r.label}: {r.skipped}" for r in rows if r.skipped)
        raise InputError(
            f"Fewer than two baselines could run on this model ({why}); add others such as 'mean', "
            "'uniform', 'gaussian' or a counterfactual 'prompt:...'."
        )
    attributed = torch.nonzero(~fixed.cpu()).flatten().tolist()
    maps = torch.stack([r.attribution.token_scores(row).double() for r in ok])[:, attributed]
    k = min(top_k, len(attributed))
    matrices = {
        "spearman": spearman(maps[:, None, :], maps[None, :, :]),
        "kendall": kendall(maps[:, None, :], maps[None, :, :]),
        "top_k_overlap": torch.tensor(
            [[top_k_intersection(a, b, k) for b in maps] for a in maps], dtype=torch.float64
        ),
    }
    verdict = sensitivity_verdict(maps, top_k=k, threshold=threshold)
    first = ok[0].attribution
    return BaselineSensitivity(
        rows=rows,
        tokens=list(first.tokens),
        attributed=attributed,
        method=info.name,
        target=plan.labels[row] if plan.n_rows > 1 else plan.description,
        row=row,
        matrices=matrices,
        verdict=verdict,
        params={k2: v for k2, v in first.params.items() if k2 != "baseline"},
        prompt=prompt,
        model_name=adapter.name,
    )
