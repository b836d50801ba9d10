"""circuitsvis displays and standalone HTML pages.

``str(rendered)`` in circuitsvis loads its JavaScript from a CDN, which fails offline. Pages
written here inline the bundle once (from ``RenderedHTML.local_src``) and then render every
component with a small script of its own, so a page with ten views carries one copy of the code.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import InputError


def _labels(res: Any) -> list[str]:
    return [f"{i}: {t!r}" for i, t in enumerate(res.targets)]


def collapse(scores: torch.Tensor, dims: Sequence[str], keep: Sequence[str]) -> torch.Tensor:
    """Sum out every axis not in ``keep`` (e.g. heads), keeping the order of the rest."""
    dims = list(dims)
    for d in list(dims):
        if d not in keep:
            scores = scores.sum(dims.index(d))
            dims.remove(d)
    return scores


def attention_heads_view(res: Any, layer: int | None = None) -> tuple[str, Any] | None:
    """circuitsvis ``attention_heads`` for a raw-attention result with a ``head`` axis, at ``layer``
    (default: the result's own layer, else the last). Only the target rows were kept, so the
    [head, dst, src] matrix holds those rows and zeros elsewhere."""
    if res.method != "attention" or "head" not in res.dims:
        return None
    import circuitsvis.attention as cva

    s, dims = res.scores, list(res.dims)
    if "layer" in dims:
        n = s.shape[dims.index("layer")]
        li = (n - 1 if layer is None else int(layer)) % n
        s = s.select(dims.index("layer"), li)
        dims.remove("layer")
    else:
        li = res.params.get("layer")
    s = s.permute(dims.index("head"), dims.index("target"), dims.index("src"))  # [head, target, src]
    n_tok = len(res.tokens)
    mat = torch.zeros(s.shape[0], n_tok, n_tok)
    for r, p in enumerate(res.target_positions):
        if 0 <= p < n_tok:
            mat[:, p, :] = s[:, r, :].float()
    names = [f"L{li}H{h}" for h in range(s.shape[0])]
    return (
        f"attention heads of layer {li} (rows of the target positions)",
        cva.attention_heads(mat, res.tokens, attention_head_names=names),
    )


def views(res: Any, target: int | str | None = None) -> list[tuple[str, Any]]:
    """The circuitsvis components that show a result, with a caption each."""
    import circuitsvis.tokens as cvt

    out: list[tuple[str, Any]] = []
    heads_view = attention_heads_view(res)
    if heads_view is not None:
        out.append(heads_view)
    if "layer" in res.dims:
        t = 0 if target is None else res._target_index(target)
        lay = collapse(res.scores, res.dims, keep=("layer", "target", "src"))[:, t]
        labels = [f"layer {i}" for i in range(lay.shape[0])]
        out.append(
            (
                f"{res.method}: target {res.targets[t]!r}, by layer (choose a layer)",
                cvt.colored_tokens_multi(res.tokens, lay.T.contiguous().float(), labels),
            )
        )
        res = res.final()
    scores = res.scores
    for d in res.dims[:-2]:
        scores = scores.sum(0)
    if target is not None or len(res.targets) == 1:
        t = 0 if target is None else res._target_index(target)
        out.append(
            (
                f"{res.method}: target {res.targets[t]!r}",
                cvt.colored_tokens(res.tokens, scores[t].float()),
            )
        )
    else:
        out.append(
            (
                f"{res.method}: {len(res.targets)} targets (choose one)",
                cvt.colored_tokens_multi(res.tokens, scores.T.contiguous().float(), _labels(res)),
            )
        )
    return out


def render(res: Any, target: int | str | None = None) -> Any:
    """The main circuitsvis component of a result (what ``res.show()`` returns in a notebook)."""
    return views(res, target)[-1][1]


_SCRIPT_OPEN = re.compile(r"<script[^>]*>")


def split_rendered(rendered: Any) -> tuple[str, str, str]:
    """(element id, bundle JavaScript, render call) of a circuitsvis RenderedHTML."""
    src = rendered.local_src
    m = re.search(r'<div id="([^"]+)"', src)
    if m is None:
        raise RuntimeError("unexpected circuitsvis output: no element id")
    body = src[_SCRIPT_OPEN.search(src).end() : src.rindex("</script>")]
    cut = body.rindex("CircuitsVis.render(")
    return m.group(1), body[:cut], body[cut:]


def _safe_js(js: str) -> str:
    return js.replace("</script", "<\\/script")


PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
code,pre{background:#f6f6f6;padding:1px 4px} .caption{color:#555;margin:.6em 0 .2em}
"""


def page(title: str, sections: Sequence[tuple[str, str, Sequence[tuple[str, Any]]]]) -> str:
    """An offline HTML page. ``sections`` are (heading, html_text, [(caption, RenderedHTML)])."""
    bundle = None
    parts = []
    for heading, text, comps in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{text}")
        for caption, comp in comps:
            el, js, call = split_rendered(comp)
            bundle = bundle or js
            parts.append(
                f'<div class="caption">{html.escape(caption)}</div>\n<div id="{el}" style="margin:10px 0"></div>\n'
                f"<script>{_safe_js(call)}</script>"
            )
    head = (
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>"
    )
    if bundle:
        head += f"<script>{_safe_js(bundle)}</script>"
    return head + f"</head><body>\n<h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"


def _kv_table(d: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(json.dumps(v, default=str)[:400])}</code></td></tr>"
        for k, v in d.items()
    )
    return f"<table>{rows}</table>"


def result_section(res: Any) -> tuple[str, str, list[tuple[str, Any]]]:
    top = res.top_k(min(5, len(res.tokens)))
    info = {
        "model": res.model_name,
        "prompt": res.prompt,
        "targets": res.targets,
        "target": res.target_description,
        "dims": list(res.dims),
        "signed": res.is_signed,
        **{f"param.{k}": v for k, v in res.params.items()},
    }
    for k in ("completeness_error", "completeness_relative_error", "seconds"):
        if k in res.diagnostics:
            info[k] = res.diagnostics[k]
    text = _kv_table(info) + "<p>Top tokens (first target): " + ", ".join(
        f"<code>{html.escape(repr(t))}</code> {s:+.4g}" for _, t, s in top
    ) + "</p>"
    return (f"{res.method}", text, views(res))


def html_page(
    results: Sequence[Any], path: str | os.PathLike | None = None, title: str | None = None
) -> str:
    if not results:
        raise InputError("Nothing to show: give at least one result.")
    title = title or f"mechattr — {results[0].prompt!r}"
    text = page(title, [result_section(r) for r in results])
    if path is not None:
        from ._io import atomic_write

        atomic_write(Path(path), text.encode("utf-8"))
    return text


def compare(results: Sequence[Any], target: int | str = 0, labels: Sequence[str] | None = None) -> Any:
    """Several results over the same tokens side by side (circuitsvis colored_tokens_multi)."""
    import circuitsvis.tokens as cvt

    if not results:
        raise InputError("compare() needs at least one result.")
    toks = results[0].tokens
    for r in results[1:]:
        if r.tokens != toks:
            raise InputError("compare() needs results over the same tokens (same prompt and model).")
    vals = torch.stack([r.token_scores(target).float() for r in results], dim=-1)
    labels = list(labels) if labels is not None else [r.method for r in results]
    return cvt.colored_tokens_multi(toks, vals, labels)


# No fetches of any kind: scripts and styles only inline, images only as data URLs. A report that
# tried to load something would show a CSP violation in the console instead of leaking a request.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'"
)


def corr_color(v: float) -> str:
    if math.isnan(v):
        return "#eee"
    # Blue for agreement, red for disagreement, white at 0 (same sense as RdBu).
    a = min(1.0, abs(v))
    if v >= 0:
        r, g, b = int(255 - 160 * a), int(255 - 110 * a), 255
    else:
        r, g, b = 255, int(255 - 160 * a), int(255 - 160 * a)
    return f"rgb({r},{g},{b})"


def matrix_table(matrix: torch.Tensor, labels: Sequence[str]) -> str:
    """A method × method matrix as a coloured HTML table."""
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(b))}</th>" for b in labels) + "</tr>"
    body = ""
    for i, a in enumerate(labels):
        cells = "".join(
            f'<td style="background:{corr_color(float(matrix[i, j]))}">{_fmt_cell(float(matrix[i, j]))}</td>'
            for j in range(len(labels))
        )
        body += f"<tr><th>{html.escape(str(a))}</th>{cells}</tr>"
    return f'<table class="agreement">{head}{body}</table>'


def _fmt_cell(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.4g}"


def with_csp(page_html: str) -> str:
    meta = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
    return page_html.replace('<meta charset="utf-8">', '<meta charset="utf-8">' + meta, 1)
