"""The result of :func:`mechattr.validate`: numbers in long format, verdicts per method and check,
and views (summary table, DataFrame, markdown, offline HTML with inline SVG curves)."""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from ._result import CheckResult, Verdict

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}"
    return str(v)


def _cell(v: Verdict | None, unavailable: str | None) -> str:
    if unavailable is not None:
        return "n/a"
    if v is None:
        return ""
    if v.passed is None:
        return _fmt(v.value) if v.value is not None else "n/a"
    return ("PASS " if v.passed else "FAIL ") + _fmt(v.value)


@dataclass
class ValidationReport:
    """What :func:`mechattr.validate` returns."""

    methods: list[str]
    checks: dict[str, CheckResult]
    meta: dict[str, Any] = field(default_factory=dict)

    # ----- numbers -----------------------------------------------------------------------------
    @property
    def records(self) -> list[dict[str, Any]]:
        return [r for c in self.checks.values() for r in c.records]

    def verdict(self, check: str, method: str) -> Verdict | None:
        if check not in self.checks:
            raise InputError(f"No check {check!r} in this report; it has {list(self.checks)}.")
        return self.checks[check].verdicts.get(method)

    def passed(self, check: str, method: str) -> bool | None:
        v = self.verdict(check, method)
        return None if v is None else v.passed

    def value(self, check: str, method: str, metric: str, **keys: Any) -> float:
        """The single record of ``metric`` for ``method`` in ``check`` matching ``keys``."""
        hits = [
            r for r in self.checks[check].records
            if r["method"] == method and r["metric"] == metric and all(r.get(k) == v for k, v in keys.items())
        ]
        if len(hits) != 1:
            raise InputError(f"{len(hits)} records match {check}/{method}/{metric} {keys}; narrow the keys.")
        return hits[0]["value"]

    def to_dataframe(self) -> Any:
        """Every number, one row each: check, method, metric, value and keys (prompt, step, ...)."""
        import pandas as pd

        return pd.DataFrame.from_records(self.records)

    def summary_rows(self) -> list[dict[str, str]]:
        rows = []
        for m in self.methods:
            row = {"method": m}
            for name, c in self.checks.items():
                row[name] = _cell(c.verdicts.get(m), c.unavailable)
            rows.append(row)
        return rows

    def summary(self) -> Any:
        """Method × check table: 'PASS x' / 'FAIL x' where a check has a criterion (x is the
        number it judged), the number alone where it has none, 'n/a' where it could not run."""
        import pandas as pd

        return pd.DataFrame.from_records(self.summary_rows()).set_index("method")

    def to_markdown(self) -> str:
        rows = self.summary_rows()
        cols = list(rows[0].keys()) if rows else ["method"]
        out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            out.append("| " + " | ".join(r[c].replace("|", "\\|") for c in cols) + " |")
        for name, c in self.checks.items():
            if c.unavailable:
                out.append(f"\n- {name}: not run — {c.unavailable}")
            elif c.data.get("reading"):  # measurements without a per-method verdict
                out.append(f"\n- {name}: {c.data['reading']}")
        return "\n".join(out)

    def criteria(self) -> dict[str, str]:
        out = {}
        for name, c in self.checks.items():
            crit = {v.criterion for v in c.verdicts.values() if v.criterion and v.passed is not None}
            if crit:
                out[name] = "; ".join(sorted(crit))
        return out

    def __repr__(self) -> str:
        return f"ValidationReport(methods={self.methods}, checks={list(self.checks)})"

    def __str__(self) -> str:
        return self.to_markdown()

    # ----- HTML --------------------------------------------------------------------------------
    def to_html(self, path: str | os.PathLike | None = None, title: str | None = None) -> str:
        """A standalone page (no network): summary, criteria, curves as inline SVG, tables."""
        from ..display import page

        title = title or f"mechattr validation — {self.meta.get('model', '')}"
        sections = [("Summary", _table(self.summary_rows()) + _dl(self.criteria()) + _meta(self.meta), [])]
        for name, c in self.checks.items():
            body = ""
            if c.unavailable:
                body += f"<p><b>Not run:</b> {html.escape(c.unavailable)}</p>"
            for n in c.notes:
                body += f"<p>{html.escape(n)}</p>"
            body += _check_body(c)
            sections.append((name, body, []))
        text = page(title, sections)
        if path is not None:
            from .._io import atomic_write

            atomic_write(Path(path), text.encode("utf-8"))
        return text

    def to_json(self) -> str:
        return json.dumps(
            {
                "meta": self.meta,
                "summary": self.summary_rows(),
                "records": self.records,
                "unavailable": {k: c.unavailable for k, c in self.checks.items() if c.unavailable},
                "readings": {k: c.data["reading"] for k, c in self.checks.items() if c.data.get("reading")},
            },
            default=str,
        )


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = ""
    for r in rows:
        cells = ""
        for c in cols:
            v = r.get(c, "")
            s = _fmt(v) if not isinstance(v, str) else v
            style = ' style="background:#e6f4ea"' if s.startswith("PASS") else ' style="background:#fce8e6"' if s.startswith("FAIL") else ""
            cells += f"<td{style}>{html.escape(s)}</td>"
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _dl(d: dict[str, str]) -> str:
    if not d:
        return ""
    return "<p>Criteria:</p><ul>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in d.items()) + "</ul>"


def _meta(meta: dict[str, Any]) -> str:
    return "<p>" + html.escape(json.dumps(meta, default=str)[:2000]) + "</p>"


def svg_lines(
    series: dict[str, list[float]], xlabels: list[str] | None = None, title: str = "",
    width: int = 560, height: int = 260, band: tuple[list[float], list[float]] | None = None,
) -> str:
    """A small line chart as inline SVG (no scripts, no network)."""
    vals = [v for ys in series.values() for v in ys if v == v and math.isfinite(v)]
    if band:
        vals += [v for ys in band for v in ys if v == v]
    if not vals:
        return "<p>(no finite values)</p>"
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    n = max(len(ys) for ys in series.values())
    L, R, T, B = 50, 150, 20, 40
    W, H = width - L - R, height - T - B

    def X(i: int) -> float:
        return L + (W * i / max(1, n - 1))

    def Y(v: float) -> float:
        return T + H * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="10">']
    parts.append(f'<text x="{L}" y="12">{html.escape(title)}</text>')
    parts.append(f'<line x1="{L}" y1="{T + H}" x2="{L + W}" y2="{T + H}" stroke="#999"/>')
    parts.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + H}" stroke="#999"/>')
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{L - 4}" y="{Y(v) + 3:.1f}" text-anchor="end">{v:.3g}</text>')
    if xlabels:
        step = max(1, len(xlabels) // 8)
        for i, lab in enumerate(xlabels):
            if i % step == 0 or i == len(xlabels) - 1:
                parts.append(f'<text x="{X(i):.1f}" y="{T + H + 14}" text-anchor="middle">{html.escape(lab)}</text>')
    if band:
        lo_b, hi_b = band
        pts = [f"{X(i):.1f},{Y(v):.1f}" for i, v in enumerate(hi_b)] + [
            f"{X(i):.1f},{Y(v):.1f}" for i, v in reversed(list(enumerate(lo_b)))
        ]
        parts.append(f'<polygon points="{" ".join(pts)}" fill="#ccc" opacity="0.5"/>')
    for si, (name, ys) in enumerate(series.items()):
        c = PALETTE[si % len(PALETTE)]
        pts = " ".join(f"{X(i):.1f},{Y(v):.1f}" for i, v in enumerate(ys) if v == v)
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.6"/>')
        parts.append(f'<text x="{L + W + 8}" y="{T + 12 * si + 10}" fill="{c}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _check_body(c: CheckResult) -> str:
    out = ""
    if c.name == "randomization" and "curves" in c.data:
        for mode, curve in c.data["curves"].items():
            steps = [s for s, _ in curve]
            labels = list(curve[0][1].keys())
            for metric in ("spearman", "spearman_abs", "top_k_intersection"):
                series = {lab: [d[lab][metric] for _, d in curve] for lab in labels}
                out += svg_lines(series, steps, f"{mode}: {metric} to the original")
            out += _table([{"step": s, **{lab: d[lab]["spearman"] for lab in labels}} for s, d in curve])
    elif c.name == "perturbation" and "mean_curves" in c.data:
        mc = c.data["mean_curves"]
        xl = [f"{i / 10:.1f}" for i in range(11)]
        for kind in ("deletion", "insertion"):
            series = {lab: d[kind] for lab, d in mc.items() if kind in d}
            out += svg_lines(series, xl, f"{kind}: mean change of the target vs fraction of tokens (random = mean of seeds)")
        summ = c.data["summary"]
        keys = ["aopc", "deletion_auc", "insertion_auc", "deletion_auc_norm", "insertion_auc_norm", "comprehensiveness", "sufficiency"]
        keys += [k for k in next(iter(summ.values())) if "@" in k]
        out += _table([{"ordering": lab, **{k: v.get(k) for k in keys}} for lab, v in summ.items()])
    elif c.name == "agreement" and "matrices" in c.data:
        labels = c.data["labels"]
        for metric, mat in c.data["matrices"].items():
            out += f"<p>{html.escape(metric)} (mean over prompts)</p>"
            out += _table([{"": a, **{b: mat[i][j] for j, b in enumerate(labels)}} for i, a in enumerate(labels)])
    elif c.name.startswith("attention_") and "table" in c.data:
        out += svg_lines(c.data["series"], c.data["xlabels"], f"{c.name} by layer")
        if c.verdicts:
            out += _table([{"ranking": m, "mean over layers": v.value} for m, v in c.verdicts.items()])
        out += _table(c.data["table"])
    else:
        rows = [
            {"method": m, "value": v.value, "pass": "" if v.passed is None else ("PASS" if v.passed else "FAIL"),
             "criterion": v.criterion, "note": v.note}
            for m, v in c.verdicts.items()
        ]
        out += _table(rows)
        if c.name == "roar" and "table" in c.data:
            out += _table(c.data["table"])
    return out
