"""The offline page of an :class:`~mechattr.explain.Explanation`: the answer card first, then the
evidence (each piece with a one-line "how to read this"), then parameters and diagnostics folded.

Built on the offline page machinery of :mod:`mechattr.display` (one inlined circuitsvis bundle) and
the Content-Security-Policy of :mod:`mechattr.report`: the page fetches nothing. Curves are inline
SVG, maps are HTML tables coloured in place.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

CSS = """
.card{border:2px solid #2b6cb0;border-radius:10px;padding:16px 22px;margin:8px 0 18px;background:#f7fbff}
.card .pred{font-size:1.35em;margin:0 0 6px}
.card .verdict{font-size:1.15em;margin:10px 0;padding:8px 12px;border-radius:6px}
.v-agree,.v-single{background:#e6f6ea;border-left:6px solid #2f855a}
.v-disagree,.v-none{background:#fff4e5;border-left:6px solid #c05621}
.tok{font-family:ui-monospace,Menlo,Consolas,monospace;background:#eef;padding:1px 5px;border-radius:4px;white-space:pre}
.prompt-strip .tok{margin:0 2px;display:inline-block;padding:3px 6px;font-size:1.05em}
table.matter td,table.matter th{padding:4px 12px} .num{text-align:right;font-variant-numeric:tabular-nums}
.howto{color:#555;font-style:italic;margin:.2em 0 .8em}
.badge{display:inline-block;border-radius:4px;padding:0 6px;font-size:.85em;color:#fff}
.b-yes{background:#2f855a}.b-no{background:#a0aec0}
table.map td{min-width:40px;text-align:center;font-size:.8em} table.map th{font-weight:normal;font-size:.85em}
.scroll{overflow-x:auto;max-width:100%}
.small{font-size:.85em;color:#444} h3{font-size:1.05em;margin-top:1.6em} svg text{font-family:system-ui,sans-serif}
details{margin:.6em 0} summary{cursor:pointer;font-weight:600}
"""

HOWTO = {
    "maps": "Each row is a method, each column a token; blue = raises the target, red = lowers it, scaled per row. Trusted methods are marked; read those.",
    "curves": "Tokens are deleted in each ordering's order; a faithful method's curve drops fastest (lowest). Dashed grey lines are the controls it must beat.",
    "agreement": "Spearman rank correlation between the methods' token scores: blue = same ranking, red = opposite. Agreement alone proves nothing — methods can agree and all be wrong.",
    "layers": "Token × head contributions summed over the heads of each layer: which layers move information from which tokens to the prediction.",
    "heads": "Each cell is one head's contribution from the tokens that matter to the target (layer rows, head columns); the card names the largest.",
    "counterfactual": "Attribution patching between the prompt and the counterfactual: how much each head's change carries the change in the target.",
    "checks": "The numbers behind the trust rule: deletion AOPC (mean drop over the deletion curve; higher is better) against each control, and the Spearman correlation with single-token deletion.",
}


def _e(x: Any) -> str:
    return html.escape(str(x))


def _tok(t: str) -> str:
    return f'<span class="tok">{_e(t)}</span>'


def _color(v: float) -> str:
    if v != v:
        return "#eee"
    a = min(1.0, abs(v))
    if v >= 0:
        return f"rgb({int(255 - 150 * a)},{int(255 - 100 * a)},255)"
    return f"rgb(255,{int(255 - 150 * a)},{int(255 - 150 * a)})"


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{nd}g}" if isinstance(v, float) else str(v)


def _card(ex: Any) -> str:
    p = ex.prediction
    if p.get("prob") is not None and p.get("foil") is not None:
        pred = (
            f"{_e(ex.model_name)} gives {_tok(p['token'])} probability <b>{p['prob']:.3f}</b> and "
            f"{_tok(p['foil'])} <b>{p['foil_prob']:.3f}</b>; explained: their logit difference, "
            f"<b>{p['value']:+.3g}</b> {_e(ex.unit)}"
        )
    elif p.get("prob") is not None:
        pred = f"{_e(ex.model_name)} predicts {_tok(p['token'])} with probability <b>{p['prob']:.3f}</b>"
        if p.get("top_token") is not None and p["top_token"] != p["token"]:
            pred += f" (its top token is {_tok(p['top_token'])}, {p['top_prob']:.3f})"
    else:
        pred = f"{_e(ex.model_name)}: {_e(ex.target_description)} = <b>{p['value']:.4g}</b>"
    strip = " ".join(
        _tok(t) if i not in {m["position"] for m in ex.matter}
        else f'<span class="tok" style="background:#9ae6b4;font-weight:700">{_e(t)}</span>'
        for i, t in enumerate(ex.tokens)
    )
    unknown = ex.diagnostics.get("unknown words") or []
    unk = ""
    if unknown:
        unk = (
            "<p class='verdict v-none'><b>Warning:</b> the model's vocabulary has no token for "
            + ", ".join(_tok(w) for w in unknown)
            + "; the model read each as its unknown token, so the page explains that token, not these words.</p>"
        )
    vclass = f"v-{ex.verdict.status}"
    verdict = f'<div class="verdict {vclass}"><b>Verdict:</b> {_e(ex.verdict.text)}</div>'
    if ex.matter:
        rows = "".join(
            f"<tr><td>{_tok(m['token'])}</td><td class='num'>{_fmt(None if m['deletion_effect'] is None else -m['deletion_effect'], 3)} {_e(ex.unit)}</td>"
            f"<td class='num'>{m['consensus']:.2f}</td></tr>"
            for m in ex.matter
        )
        matter = (
            "<p><b>Tokens that matter</b> (according to the trusted methods) and what deleting each one alone does to the target:</p>"
            f"<table class='matter'><tr><th>token</th><th>effect of deleting it</th><th>consensus score (1 = top for every trusted method)</th></tr>{rows}</table>"
        )
    else:
        eff = sorted(((e, i) for i, e in enumerate(ex.deletion_effects) if e is not None), key=lambda x: -x[0])[:3]
        matter = (
            "<p><b>No tokens named:</b> the page does not give a confident answer. For reference, the largest "
            "single-token deletion effects are " + ", ".join(f"{_tok(ex.tokens[i])} {-e:+.3g} {_e(ex.unit)}" for e, i in eff) + ".</p>"
        )
    trusted = [m for m in ex.methods if m.trust is not None and m.trust.trusted]
    others = [m for m in ex.methods if m.trust is not None and not m.trust.trusted]
    why = "<p><b>Methods trusted on this prompt:</b> " + (
        "; ".join(f"<b>{_e(m.label)}</b> ({_e(m.trust.reason)})" for m in trusted) if trusted else "none"
    ) + ".<br><b>Not trusted:</b> " + (
        "; ".join(f"{_e(m.label)} ({_e(m.trust.reason)})" for m in others) if others else "none"
    ) + ".</p>"
    heads = ""
    if ex.heads.get("carry"):
        heads = (
            f"<p><b>Heads that carry it</b> <span class='small'>({_e(ex.heads['source'])})</span>: "
            + ", ".join(f"<b>L{h['layer']}H{h['head']}</b> {h['score']:+.3g}" for h in ex.heads["carry"])
            + f"<br><span class='small'>{_e(ex.heads.get('meaning', ''))}</span></p>"
        )
    rule = f"<p class='small'><b>Trust rule.</b> {_e(ex.rule['text'])}</p>"
    return (
        f'<div class="card" id="answer-card"><p class="pred">{pred}</p>'
        f'<div class="prompt-strip">{strip} → {_tok(ex.target)}</div>{unk}{verdict}{matter}{why}{heads}{rule}</div>'
    )


def _token_maps(ex: Any) -> str:
    head = "<tr><th>method</th><th></th>" + "".join(f"<th>{_tok(t)}</th>" for t in ex.tokens) + "</tr>"
    body = ""
    for m in ex.methods:
        if m.error:
            body += f"<tr><th>{_e(m.label)}</th><td colspan='{len(ex.tokens) + 1}'>not run: {_e(m.error)}</td></tr>"
            continue
        mx = max((abs(v) for v in m.scores), default=0.0) or 1.0
        badge = "<span class='badge b-yes'>trusted</span>" if m.trust and m.trust.trusted else "<span class='badge b-no'>not trusted</span>"
        cells = "".join(f"<td style='background:{_color(v / mx)}'>{v:+.2g}</td>" for v in m.scores)
        body += f"<tr><th>{_e(m.label)}</th><td>{badge}</td>{cells}</tr>"
    eff = ex.deletion_effects
    mx = max((abs(v) for v in eff if v is not None), default=0.0) or 1.0
    cells = "".join(
        f"<td style='background:{_color(v / mx)}'>{v:+.2g}</td>" if v is not None else "<td>—</td>" for v in eff
    )
    body += f"<tr><th>single-token deletion</th><td><span class='small'>reference</span></td>{cells}</tr>"
    return f"<div class='scroll'><table class='map'>{head}{body}</table></div>"


def _svg_curves(ex: Any) -> str:
    W, H, L, B = 640, 300, 60, 40
    series = [(lab, c, "solid") for lab, c in ex.curves.items()]
    series += [(f"{name} (control)", d["curve"], "dash") for name, d in ex.controls.items()]
    allv = [v for _, c, _ in series for v in c if v == v]
    lo, hi = min(allv + [0.0]), max(allv + [0.0])
    if hi - lo < 1e-9:
        hi = lo + 1
    palette = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#2c7a7b", "#975a16", "#4a5568"]

    def xy(i: int, n: int, v: float) -> str:
        x = L + (W - L - 10) * i / max(n - 1, 1)
        y = 10 + (H - B - 10) * (hi - v) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg width="{W + 220}" height="{H}" role="img" aria-label="deletion curves">',
             f'<line x1="{L}" y1="{H - B}" x2="{W - 10}" y2="{H - B}" stroke="#999"/>',
             f'<line x1="{L}" y1="10" x2="{L}" y2="{H - B}" stroke="#999"/>',
             f'<text x="{(L + W) / 2}" y="{H - 8}" text-anchor="middle" font-size="12">fraction of removable tokens deleted</text>',
             f'<text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" text-anchor="middle">change in target ({_e(ex.unit)})</text>',
             f'<text x="{L - 4}" y="14" text-anchor="end" font-size="11">{hi:.2g}</text>',
             f'<text x="{L - 4}" y="{H - B}" text-anchor="end" font-size="11">{lo:.2g}</text>']
    ci = di = 0
    dashes = ("6,4", "2,3", "10,3,2,3", "1,4")  # one pattern per control, so each can be told apart
    for k, (lab, c, style) in enumerate(series):
        if style == "dash":
            color, dash, width = "#888", f' stroke-dasharray="{dashes[di % len(dashes)]}"', 1.6
            di += 1
        else:
            color, dash, width = palette[ci % len(palette)], "", 2.5
            ci += 1
        pts = " ".join(xy(i, len(c), v) for i, v in enumerate(c))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{dash} points="{pts}"/>')
        parts.append(f'<line x1="{W + 5}" y1="{20 + 18 * k}" x2="{W + 30}" y2="{20 + 18 * k}" stroke="{color}" stroke-width="{width}"{dash}/>')
        parts.append(f'<text x="{W + 35}" y="{24 + 18 * k}" font-size="12">{_e(lab)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _checks_table(ex: Any) -> str:
    ctrl = list(ex.rule["controls"])
    head = "<tr><th>method</th><th>trusted</th><th>deletion AOPC</th>" + "".join(f"<th>beats {c}<br><span class='small'>(bar)</span></th>" for c in ctrl) + "<th>Spearman vs single-token deletion</th></tr>"
    body = ""
    for m in ex.methods:
        t = m.trust
        if t is None:
            continue
        cells = "".join(
            f"<td>{'✔' if t.beats[c] else '✘'} <span class='small'>({t.controls[c]:.3g})</span></td>" for c in ctrl
        )
        body += (
            f"<tr><th>{_e(m.label)}</th><td>{'yes' if t.trusted else 'no'}</td><td class='num'>{t.deletion_aopc:.3g}</td>"
            f"{cells}<td class='num'>{_fmt(t.ablation_spearman, 2)}</td></tr>"
        )
    bs = ex.diagnostics.get("baseline sensitivity")
    note = ""
    if isinstance(bs, dict) and "spearman" in bs:
        note = (
            f"<p>Integrated gradients' baseline sensitivity: Spearman {_fmt(bs['spearman'], 2)} between the "
            f"rankings with baselines {_e(' and '.join(bs['baselines']))} (1 = the baseline does not change the ranking).</p>"
        )
    elif isinstance(bs, dict):
        note = f"<p>Integrated gradients' baseline sensitivity ({_e(bs.get('source'))}): {_e(bs.get('result'))}</p>"
    return f"<table>{head}{body}</table>{note}"


def _grid(rows: list[list[float]], row_labels: list[str], col_labels: list[str]) -> str:
    mx = max((abs(v) for r in rows for v in r), default=0.0) or 1.0
    head = "<tr><th></th>" + "".join(f"<th>{c}</th>" for c in col_labels) + "</tr>"
    body = "".join(
        f"<tr><th>{_e(lab)}</th>" + "".join(f"<td style='background:{_color(v / mx)}' title='{v:.4g}'>{v:+.1g}</td>" for v in r) + "</tr>"
        for lab, r in zip(row_labels, rows)
    )
    return f"<div class='scroll'><table class='map'>{head}{body}</table></div>"


def _agreement(ex: Any) -> str:
    from ..display import matrix_table
    import torch

    labs = ex.agreement["labels"]
    if len(labs) < 2:
        return "<p>Only one method ran: nothing to compare.</p>"
    return matrix_table(torch.tensor(ex.agreement["spearman"], dtype=torch.float64), labs)


def _section(title: str, howto_key: str | None, body: str) -> str:
    how = f'<p class="howto">How to read this: {_e(HOWTO[howto_key])}</p>' if howto_key else ""
    return f'<section class="evidence"><h3>{_e(title)}</h3>{how}{body}</section>'


def _interactive(ex: Any) -> list[tuple[str, Any]]:
    """The same token maps as a circuitsvis component (hover a token, choose a method)."""
    try:
        import circuitsvis.tokens as cvt
        import torch
    except ImportError:  # pragma: no cover - circuitsvis is a dependency
        return []
    ran = [m for m in ex.methods if not m.error]
    vals = torch.tensor([m.scores for m in ran], dtype=torch.float32).T.contiguous()
    labels = [f"{m.label} ({'trusted' if m.trust and m.trust.trusted else 'not trusted'})" for m in ran]
    return [("Interactive token map (choose a method; hover a token for its score)", cvt.colored_tokens_multi(ex.tokens, vals, labels))]


def render_page(ex: Any) -> str:
    from ..display import page
    from ..display import with_csp as _with_csp

    sec: list[tuple[str, str, list[tuple[str, Any]]]] = []
    sec.append(("Answer", f"<style>{CSS}</style>" + _card(ex), []))
    ev = _section("Token maps, side by side", "maps", _token_maps(ex))
    comps = _interactive(ex)
    ev += _section("Deletion curves against the controls", "curves", _svg_curves(ex))
    ev += _section("The checks behind the trust rule", "checks", _checks_table(ex))
    ev += _section("Agreement between methods", "agreement", _agreement(ex))
    if ex.heads.get("by_layer"):
        by_layer = ex.heads["by_layer"]
        ev += _section("Per layer", "layers", _grid(by_layer, [f"layer {i}" for i in range(len(by_layer))], [_tok(t) for t in ex.tokens]))
    if ex.heads.get("total"):
        tot = ex.heads["total"]
        toks = ", ".join(_tok(ex.tokens[p]) for p in ex.heads.get("positions", []))
        ev += _section("Head map", "heads", f"<p class='small'>Contributions from {toks}.</p>" + _grid(tot, [f"L{i}" for i in range(len(tot))], [f"H{h}" for h in range(len(tot[0]))]))
    if ex.counterfactual is not None:
        cf = ex.counterfactual
        body = (
            f"<p>{_e(ex.prompt)!s} (target {cf['metric_clean']:.3g}) vs {_e(cf['prompt'])} (target {cf['metric_corrupt']:.3g}).</p>"
            + _grid(cf["all_heads"], [f"L{i}" for i in range(len(cf["all_heads"]))], [f"H{h}" for h in range(len(cf["all_heads"][0]))])
        )
        if cf.get("edges"):
            body += "<p>Top edges: " + ", ".join(_e(e) for e in cf["edges"]) + "</p>"
        elif cf.get("edges_note"):
            body += f"<p class='small'>{_e(cf['edges_note'])}</p>"
        ev += _section("Counterfactual: heads that carry the difference", "counterfactual", body)
    sec.append(("Evidence", ev, comps))
    params = json.dumps(ex.params, indent=2, default=str)
    diags = json.dumps(ex.diagnostics, indent=2, default=str)
    mdiag = json.dumps({m.label: m.diagnostics for m in ex.methods}, indent=2, default=str)
    sec.append((
        "Parameters and diagnostics",
        f"<details><summary>parameters</summary><pre>{_e(params)}</pre></details>"
        f"<details><summary>diagnostics</summary><pre>{_e(diags)}</pre></details>"
        f"<details><summary>per-method diagnostics</summary><pre>{_e(mdiag)}</pre></details>",
        [],
    ))
    shown = ex.target if ex.prediction.get("foil") is not None else repr(ex.target)
    return _with_csp(page(f"mechattr explain — {ex.prompt!r} → {shown}", sec))
