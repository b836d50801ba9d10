"""circuitsvis views of linking results, and offline HTML pages through :func:`mechattr.display.page`.

* :func:`head_view`: token × head heatmap for one layer (one colored-tokens panel per head).
* :func:`feature_view`: the top SAE features with their token attributions, plus a table.
* :func:`probe_view`: a probe's attributions next to its score.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from ..display import page
from ..errors import InputError


def head_view(res: Any, layer: int = -1, target: int | str = 0) -> Any:
    """circuitsvis ``colored_tokens_multi`` of one layer: one label per head, values per token."""
    import circuitsvis.tokens as cvt

    if tuple(res.dims) != ("layer", "head", "target", "src"):
        raise InputError(f"head_view needs a token × head result (dims layer, head, target, src), got {res.dims}.")
    n = res.scores.shape[0]
    if not -n <= layer < n:
        raise InputError(f"Layer {layer} out of range; this result has {n} layers.")
    t = res._target_index(target)
    vals = res.scores[layer % n, :, t, :].T.contiguous().float()  # src head
    labels = [f"L{layer % n}H{h}" for h in range(vals.shape[1])]
    return cvt.colored_tokens_multi(res.tokens, vals, labels)


def feature_table_html(res: Any) -> str:
    """HTML table: feature id, activation, direct effect(s) if computed, top tokens."""
    feats = res.params.get("features", [])
    acts = res.params.get("feature_acts", [0.0] * len(feats))
    eff = res.diagnostics.get("direct_effects")
    eff_labels = res.diagnostics.get("direct_effect_targets", [])
    head = "<tr><th>feature</th><th>activation</th>" + "".join(
        f"<th>direct effect on {html.escape(str(lab))}</th>" for lab in (eff_labels if eff else [])
    ) + "<th>top tokens</th></tr>"
    rows = []
    for i, f in enumerate(feats):
        s = res.scores[i, 0]
        top = torch.argsort(s.abs(), descending=True)[:3].tolist()
        toks = ", ".join(f"<code>{html.escape(repr(res.tokens[j]))}</code> {float(s[j]):+.3g}" for j in top)
        cells = "".join(f"<td>{v:+.4g}</td>" for v in (eff[i] if eff else []))
        rows.append(f"<tr><td>{f}</td><td>{acts[i]:.4g}</td>{cells}<td>{toks}</td></tr>")
    frozen = "yes" if res.params.get("frozen") else "no"
    return (
        f"<p>Hook <code>{html.escape(str(res.params.get('hook')))}</code>, position "
        f"{res.params.get('position')}; frozen attention/norm scales: {frozen}.</p>"
        f"<table>{head}{''.join(rows)}</table>"
    )


def feature_view(res: Any) -> Any:
    """circuitsvis ``colored_tokens_multi``: one label per feature (id and activation)."""
    import circuitsvis.tokens as cvt

    if res.dims[0] != "feature":
        raise InputError(f"feature_view needs a token_feature_map result, got dims {res.dims}.")
    feats = res.params.get("features", list(range(res.scores.shape[0])))
    acts = res.params.get("feature_acts", [0.0] * len(feats))
    vals = res.scores[:, 0, :].T.contiguous().float()  # src feature
    labels = [f"f{f} (act {a:.3g})" for f, a in zip(feats, acts)]
    return cvt.colored_tokens_multi(res.tokens, vals, labels)


def probe_view(res: Any, score: float | Sequence[float] | torch.Tensor | None = None) -> tuple[str, Any]:
    """(HTML text with the probe score, circuitsvis colored tokens of the attributions)."""
    import circuitsvis.tokens as cvt

    if score is None:
        score = res.diagnostics.get("f_input")
    vals = torch.as_tensor(score, dtype=torch.float32).reshape(-1).tolist() if score is not None else []
    text = "<p>" + html.escape(res.target_description or "probe") + ": " + ", ".join(
        f"<b>{html.escape(str(lab))}</b> = {v:+.4g}" for lab, v in zip(res.targets, vals)
    ) + f" &nbsp;(method <code>{html.escape(res.method)}</code>)</p>"
    s = res.final().scores
    for _ in res.final().dims[:-2]:
        s = s.sum(0)
    if len(res.targets) == 1:
        comp = cvt.colored_tokens(res.tokens, s[0].float())
    else:
        comp = cvt.colored_tokens_multi(res.tokens, s.T.contiguous().float(), list(res.targets))
    return text, comp


def linking_page(
    title: str,
    *,
    heads: Any = None,
    features: Any = None,
    probes: Sequence[Any] = (),
    path: str | os.PathLike | None = None,
) -> str:
    """An offline HTML page with any of: token × head heatmaps (every layer), the token → feature
    table, probe attributions next to the probe score."""
    sections = []
    if heads is not None:
        comps = [(f"layer {layer}: token × head ({heads.params.get('mode', '')})", head_view(heads, layer))
                 for layer in range(heads.scores.shape[0])]
        sections.append(("Token × head", f"<p>Target {html.escape(repr(heads.targets[0]))}.</p>", comps))
    if features is not None:
        sections.append(("Token → SAE feature", feature_table_html(features), [("features", feature_view(features))]))
    for res in probes:
        text, comp = probe_view(res)
        sections.append((f"Probe: {res.method}", text, [(res.targets[0], comp)]))
    if not sections:
        raise InputError("linking_page needs heads=, features= or probes=.")
    out = page(title, sections)
    if path is not None:
        from .._io import atomic_write

        atomic_write(Path(path), out.encode("utf-8"))
    return out


__all__ = ["head_view", "feature_view", "feature_table_html", "probe_view", "linking_page"]
