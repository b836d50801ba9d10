"""The result of :func:`mechattr.explain`: an :class:`Explanation` holds the answer and its evidence
as plain data (lists, dicts, floats), with views: summary, DataFrame, JSON, HTML page, notebook."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checks import Trust
from .verdict import Verdict


@dataclass
class MethodResult:
    label: str
    method: str
    scores: list[float]  # [pos] token scores for the target (final layer, heads summed)
    trust: Trust | None
    why: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    by_layer: list[list[float]] | None = None  # [layer, pos] for layered methods


@dataclass
class Explanation:
    """Everything :func:`explain` found, as data. Views: :meth:`summary`, :meth:`to_dataframe`,
    :meth:`to_dict` / :meth:`to_json`, :meth:`to_html`, :meth:`show`."""

    model_name: str
    prompt: str
    tokens: list[str]
    free: list[int]
    target: str
    target_description: str
    unit: str
    prediction: dict[str, Any]
    budget: str
    replacement: str
    methods: list[MethodResult]
    verdict: Verdict
    matter: list[dict[str, Any]]  # tokens that matter: position, token, consensus, deletion effect
    deletion_effects: list[float | None]  # [pos] f(x) - f(x without the token); None where not removable
    controls: dict[str, dict[str, Any]]  # control -> {"aopc": ..., "curve": [...]}
    curves: dict[str, list[float]]  # method label -> mean deletion curve (change in the target)
    agreement: dict[str, Any]  # {"labels": [...], "spearman": [[...]]}
    heads: dict[str, Any]  # token × head map and the heads that carry the answer
    counterfactual: dict[str, Any] | None
    rule: dict[str, Any]
    params: dict[str, Any]
    diagnostics: dict[str, Any]

    # -- views -------------------------------------------------------------------------------
    @property
    def trusted(self) -> list[str]:
        return [m.label for m in self.methods if m.trust is not None and m.trust.trusted]

    def top_heads(self) -> list[dict[str, Any]]:
        return list(self.heads.get("carry", []))

    def summary(self) -> str:
        p = self.prediction
        lines = [
            f"{self.model_name}: {self.prompt!r} -> {self.target!r}"
            + (f" (p = {p['prob']:.3g})" if p.get("prob") is not None else ""),
            f"verdict: {self.verdict.text}",
        ]
        if self.diagnostics.get("unknown words"):
            lines.append("warning: not in the model's vocabulary (read as its unknown token): "
                         + ", ".join(repr(w) for w in self.diagnostics["unknown words"]))
        for t in self.matter:
            eff = t["deletion_effect"]
            lines.append(
                f"  {t['token']!r}: deleting it changes the target by "
                + ("n/a" if eff is None else f"{-eff:+.2f} {self.unit}")
            )
        for m in self.methods:
            if m.error:
                lines.append(f"  {m.label}: not run ({m.error})")
            elif m.trust is not None:
                lines.append(f"  {m.label}: {'TRUSTED' if m.trust.trusted else 'not trusted'} — {m.trust.reason}")
        if self.heads.get("carry"):
            lines.append(
                f"heads ({self.heads['source']}): "
                + ", ".join(f"L{h['layer']}H{h['head']} {h['score']:+.3g}" for h in self.heads["carry"])
            )
        return "\n".join(lines)

    def to_dataframe(self) -> Any:
        """One row per (method, token): score, trust, and the token's single-token deletion effect."""
        import pandas as pd

        rows = []
        for m in self.methods:
            if m.error:
                continue
            for i, tok in enumerate(self.tokens):
                rows.append({
                    "method": m.label, "position": i, "token": tok, "score": m.scores[i],
                    "trusted": bool(m.trust and m.trust.trusted),
                    "deletion_effect": self.deletion_effects[i],
                    "matters": any(t["position"] == i for t in self.matter),
                })
        return pd.DataFrame.from_records(rows)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return json.loads(json.dumps(dataclasses.asdict(self), default=_jsonable))

    def to_json(self, path: str | os.PathLike | None = None, indent: int | None = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            from .._io import atomic_write as _atomic_write

            _atomic_write(Path(path), text.encode("utf-8"))
        return text

    def to_html(self, path: str | os.PathLike | None = None) -> str:
        from .page import render_page

        text = render_page(self)
        if path is not None:
            from .._io import atomic_write as _atomic_write

            _atomic_write(Path(path), text.encode("utf-8"))
        return text

    def show(self) -> Any:
        """The page in a notebook (an IPython HTML object), else the summary printed."""
        try:
            from IPython.display import HTML
        except ImportError:
            print(self.summary())
            return None
        import html as _h

        page = self.to_html()
        return HTML(f'<iframe style="width:100%;height:900px;border:0" srcdoc="{_h.escape(page)}"></iframe>')

    def _repr_html_(self) -> str:  # pragma: no cover - notebooks
        return self.show().data

    def __repr__(self) -> str:
        return f"<Explanation {self.prompt!r} -> {self.target!r}: {self.verdict.status}; trusted {self.trusted}>"


def _jsonable(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, float) and math.isnan(x):
        return None
    return str(x)
