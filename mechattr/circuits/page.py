"""The circuit page: :func:`mechattr.circuits.display.circuit_page` when that module is present
(the interactive offline graph), else a minimal self-contained page (a table of the edges)."""

from __future__ import annotations

import html
import json
from typing import Any


def circuit_page(data: dict[str, Any]) -> str:
    try:
        from .display import circuit_page as full  # written on the display branch
    except ImportError:
        return minimal_page(data)
    return full(data)


def minimal_page(data: dict[str, Any]) -> str:
    """A dependency-free page: title, metric, the circuit's edges by |score|, faithfulness."""
    edges = data.get("edges", [])
    keep = set(data.get("in_circuit") or range(min(len(edges), 50)))
    rows = []
    for i, e in enumerate(edges):
        if i not in keep:
            continue
        reader = e["target"] + (f"&lt;{e['port']}&gt;" if e.get("port") else "")
        colour = "#c0392b" if e["score"] > 0 else "#2c5aa0"
        rows.append(
            f"<tr><td>{html.escape(e['source'])}</td><td>{reader}</td>"
            f"<td style='color:{colour};text-align:right'>{e['score']:+.4g}</td></tr>"
        )
    faith = ""
    if data.get("faithfulness"):
        faith = "<h2>Faithfulness</h2><table><tr><th>budget</th><th>edges</th><th>f</th></tr>" + "".join(
            f"<tr><td>{p['budget']:g}</td><td>{p['n_edges']}</td><td>{p['f']:.3f}</td></tr>" for p in data["faithfulness"]
        ) + "</table>"
    m = data.get("metric", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        + html.escape(data.get("title", "circuit"))
        + "</title><style>body{font-family:sans-serif;margin:1.5em}td,th{padding:2px 8px}</style></head><body>"
        + f"<h1>{html.escape(data.get('title', 'circuit'))}</h1>"
        + f"<p>method {html.escape(str(data.get('method')))}, direction {html.escape(str(data.get('direction')))}; "
        + f"metric {html.escape(str(m.get('name')))}: clean {m.get('clean', float('nan')):.4g}, "
        + f"corrupt {m.get('corrupt', float('nan')):.4g}</p>"
        + f"<p>tokens: {html.escape(' | '.join(data.get('tokens', [])))}</p>"
        + f"<h2>Circuit edges ({len(rows)})</h2><table><tr><th>writer</th><th>reader</th><th>score</th></tr>"
        + "".join(rows) + "</table>" + faith
        + "<script type='application/json' id='circuit-data'>"
        + json.dumps(data).replace("</", "<\\/") + "</script></body></html>"
    )
