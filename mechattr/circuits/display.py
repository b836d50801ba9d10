"""The interactive circuit graph: one standalone HTML page that opens with no network.

The page draws the graph of :mod:`mechattr.circuits` (the "circuit display data contract" dict):
the input, every attention head and MLP, and the logits as nodes, layer by layer from the bottom
(input) to the top (logits); edges writer → reader coloured by the sign of their score and as wide
as their |score|. A slider keeps the top-k edges by |score|; hovering names a node or edge and its
score; clicking a head shows its attention pattern on the clean prompt (circuitsvis).

Graph drawing uses vis-network (Apache-2.0 OR MIT). We do not commit its code: it is read at run
time from the ``pyvis`` package (BSD-3-Clause), whose wheel ships vis-network's standalone UMD
build, and inlined into the page, the same way the circuitsvis bundle is inlined (see
:mod:`mechattr.display`). Only the file is read; ``pyvis`` itself is never imported, so
``pip install --no-deps pyvis`` is enough. A Content-Security-Policy forbids the page any fetch.

>>> from mechattr.circuits import write_circuit_page
>>> write_circuit_page(graph, "circuit.html")          # graph: result's display dict
"""

from __future__ import annotations

import functools
import html
import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError, MechattrError, suggest

__all__ = ["circuit_page", "write_circuit_page", "show_circuit", "vis_network_js", "MissingDependencyError"]

REQUIRED_KEYS = ("tokens", "n_layers", "n_heads", "nodes", "edges")
NODE_KINDS = ("input", "head", "mlp", "logits")
WRITER_KINDS = frozenset({"input", "head", "mlp"})
READER_KINDS = frozenset({"head", "mlp", "logits"})
PORTS = ("q", "k", "v")
DIRECTIONS = ("denoise", "noise")
# Drawing more edges than this makes the canvas slow and unreadable; the page says how many exist.
DEFAULT_MAX_EDGES = 1000

# Same policy as ma.report: inline scripts and styles only, images only as data URLs, no fetches.
from ..display import CSP  # noqa: E402

INSTALL_HINT = 'pip install "mechattr[graph]"  (or: pip install --no-deps pyvis)'


class MissingDependencyError(MechattrError, ImportError):
    """An optional package that this feature needs is not installed."""


# ----- third-party JavaScript, read from installed packages -------------------------------------
_VIS_DIR = re.compile(r"vis-(\d+(?:\.\d+)*)$")


@functools.lru_cache(maxsize=1)
def vis_network_js() -> tuple[str, str]:
    """(version, source) of vis-network's standalone build shipped in the ``pyvis`` wheel; the
    newest version found there. Raises :class:`MissingDependencyError` when pyvis is missing."""
    spec = importlib.util.find_spec("pyvis")  # locates the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found: list[tuple[tuple[int, ...], Path]] = []
    for root in roots:
        for sub in ("lib", "templates/lib"):
            base = Path(root) / sub
            if not base.is_dir():
                continue
            for d in base.iterdir():
                m = _VIS_DIR.match(d.name)
                if m and (d / "vis-network.min.js").is_file():
                    found.append((tuple(int(x) for x in m.group(1).split(".")), d / "vis-network.min.js"))
    if not found:
        raise MissingDependencyError(
            "The circuit graph page needs vis-network, which mechattr reads from the `pyvis` package "
            f"(only its bundled JavaScript is used). Install it: {INSTALL_HINT}"
        )
    version, path = max(found)
    src = path.read_text(encoding="utf-8")
    if "vis-network" not in src[:2000] or "DataSet" not in src:
        raise MissingDependencyError(f"{path} is not vis-network's standalone build; reinstall pyvis ({INSTALL_HINT}).")
    return ".".join(map(str, version)), src


@functools.lru_cache(maxsize=1)
def _circuitsvis_bundle() -> str:
    """The circuitsvis JavaScript bundle (defines ``CircuitsVis.render`` and its components)."""
    import circuitsvis.attention as cva
    import torch

    from ..display import split_rendered

    _, js, _ = split_rendered(cva.attention_pattern(tokens=["a", "b"], attention=torch.eye(2)))
    return js


# ----- validation of the data contract ----------------------------------------------------------
def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _tolist(x: Any) -> Any:
    return x.tolist() if hasattr(x, "tolist") else x


def _validate(graph: Any) -> dict[str, Any]:
    """Check ``graph`` against the circuit display data contract; a normalised copy."""
    if not isinstance(graph, Mapping):
        raise InputError(f"A circuit graph must be a dict (the circuit display data contract), got {type(graph).__name__}.")
    missing = [k for k in REQUIRED_KEYS if k not in graph]
    if missing:
        raise InputError(
            f"The circuit graph lacks the key(s) {', '.join(map(repr, missing))}; it needs "
            f"{', '.join(map(repr, REQUIRED_KEYS))} (see the circuit display data contract in docs/circuits.md)."
        )
    tokens = _tolist(graph["tokens"])
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise InputError("graph['tokens'] must be a non-empty list of strings (the clean prompt's tokens).")
    n_layers, n_heads = graph["n_layers"], graph["n_heads"]
    for key, v in (("n_layers", n_layers), ("n_heads", n_heads)):
        if not _int(v) or v < 1:
            raise InputError(f"graph[{key!r}] must be a positive integer, got {v!r}.")
    direction = graph.get("direction")
    if direction is not None and direction not in DIRECTIONS:
        raise InputError(f"graph['direction'] must be 'denoise' or 'noise', got {direction!r}.")

    nodes_in = graph["nodes"]
    if not isinstance(nodes_in, (list, tuple)) or not nodes_in:
        raise InputError("graph['nodes'] must be a non-empty list of node dicts.")
    nodes: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(nodes_in):
        where = f"graph['nodes'][{i}]"
        if not isinstance(n, Mapping):
            raise InputError(f"{where} must be a dict, got {type(n).__name__}.")
        for k in ("id", "kind", "layer"):
            if k not in n:
                raise InputError(f"{where} lacks the key {k!r} (a node needs 'id', 'kind' and 'layer').")
        nid, kind, layer, head = n["id"], n["kind"], n["layer"], n.get("head")
        if not isinstance(nid, str):
            raise InputError(f"{where}['id'] must be a string, got {nid!r}.")
        if kind not in NODE_KINDS:
            raise InputError(f"{where} ({nid!r}) has kind {kind!r}; expected one of {NODE_KINDS}.")
        if not _int(layer):
            raise InputError(f"{where} ({nid!r}) has layer {layer!r}; expected an integer.")
        if kind == "input":
            ok = nid == "input" and layer == -1
            want = "id 'input' and layer -1"
        elif kind == "logits":
            ok = nid == "logits" and layer == n_layers
            want = f"id 'logits' and layer n_layers = {n_layers}"
        elif kind == "mlp":
            ok = 0 <= layer < n_layers and nid == f"m{layer}"
            want = f"id 'm{{L}}' with 0 <= L < {n_layers} equal to its layer"
        else:
            ok = _int(head) and 0 <= layer < n_layers and 0 <= head < n_heads and nid == f"a{layer}.h{head}"
            want = f"id 'a{{L}}.h{{H}}' matching its layer and head (L < {n_layers}, H < {n_heads})"
        if not ok:
            raise InputError(f"{where}: a node of kind {kind!r} needs {want}; got id {nid!r}, layer {layer!r}, head {head!r}.")
        if nid in by_id:
            raise InputError(f"{where}: the node id {nid!r} appears twice in graph['nodes'].")
        score = n.get("score")
        if score is not None and not _num(score):
            raise InputError(f"{where} ({nid!r}) has score {score!r}; expected a finite number or None.")
        node = {"id": nid, "kind": kind, "layer": layer, "head": head if kind == "head" else None,
                "score": None if score is None else float(score)}
        nodes.append(node)
        by_id[nid] = node

    edges_in = graph["edges"]
    if not isinstance(edges_in, (list, tuple)):
        raise InputError("graph['edges'] must be a list of edge dicts.")
    edges: list[dict[str, Any]] = []
    for i, e in enumerate(edges_in):
        where = f"graph['edges'][{i}]"
        if not isinstance(e, Mapping):
            raise InputError(f"{where} must be a dict, got {type(e).__name__}.")
        for k in ("source", "target", "score"):
            if k not in e:
                raise InputError(f"{where} lacks the key {k!r} (an edge needs 'source', 'target', 'score' and 'port').")
        src, dst, port, score = e["source"], e["target"], e.get("port"), e["score"]
        for role, nid in (("source", src), ("target", dst)):
            if nid not in by_id:
                raise InputError(
                    f"{where} has the unknown {role} node id {nid!r}: it is not in graph['nodes']."
                    + (suggest(nid, by_id) if isinstance(nid, str) else "")
                )
        a, b = by_id[src], by_id[dst]
        if a["kind"] not in WRITER_KINDS:
            raise InputError(f"{where}: {src!r} (kind {a['kind']!r}) cannot be an edge's source; writers are input, heads and MLPs.")
        if b["kind"] not in READER_KINDS:
            raise InputError(f"{where}: {dst!r} (kind {b['kind']!r}) cannot be an edge's target; readers are heads, MLPs and logits.")
        if port is not None and (port not in PORTS or b["kind"] != "head"):
            raise InputError(f"{where} ({src}->{dst}) has port {port!r}; only a head target takes a port, one of {PORTS}.")
        same_layer_ok = a["kind"] == "head" and b["kind"] == "mlp" and a["layer"] == b["layer"]
        if not (a["layer"] < b["layer"] or same_layer_ok):
            raise InputError(f"{where} ({src}->{dst}) does not go upward: a writer must sit below its reader.")
        if not _num(score):
            raise InputError(f"{where} ({src}->{dst}) has score {score!r}; expected a finite number.")
        edges.append({"source": src, "target": dst, "port": port, "score": float(score)})

    in_circuit = graph.get("in_circuit")
    if in_circuit is not None:
        in_circuit = _tolist(in_circuit)
        if not isinstance(in_circuit, (list, tuple)) or not all(_int(j) and 0 <= j < len(edges) for j in in_circuit):
            raise InputError(f"graph['in_circuit'] must be a list of indices into graph['edges'] (0 .. {len(edges) - 1}).")
        in_circuit = sorted(set(in_circuit))

    patterns: dict[str, list[list[float]]] = {}
    for hid, pat in (graph.get("patterns") or {}).items():
        if hid not in by_id or by_id[hid]["kind"] != "head":
            raise InputError(
                f"graph['patterns'] has the key {hid!r}, which is not a head node of this graph."
                + (suggest(hid, [k for k, v in by_id.items() if v["kind"] == "head"]) if isinstance(hid, str) else "")
            )
        pat = _tolist(pat)
        n = len(tokens)
        if (not isinstance(pat, (list, tuple)) or len(pat) != n
                or not all(isinstance(r, (list, tuple)) and len(r) == n and all(_num(x) for x in r) for r in pat)):
            raise InputError(f"graph['patterns'][{hid!r}] must be a {n} x {n} list of finite numbers (dst x src over the tokens).")
        patterns[hid] = [[float(f"{x:.4g}") for x in r] for r in pat]

    faith = graph.get("faithfulness")
    if faith is not None:
        if not isinstance(faith, (list, tuple)) or not all(
            isinstance(p, Mapping) and all(_num(p.get(k)) for k in ("budget", "n_edges", "f")) for p in faith
        ):
            raise InputError("graph['faithfulness'] must be a list of {'budget', 'n_edges', 'f'} dicts with numbers.")
        faith = [{"budget": float(p["budget"]), "n_edges": int(p["n_edges"]), "f": float(p["f"])} for p in faith]

    metric = graph.get("metric")
    if metric is not None and not isinstance(metric, Mapping):
        raise InputError("graph['metric'] must be a dict {'name', 'clean', 'corrupt'}.")
    return {
        "title": str(graph.get("title") or ""),
        "tokens": list(tokens),
        "n_layers": n_layers,
        "n_heads": n_heads,
        "metric": None if metric is None else {k: metric.get(k) for k in ("name", "clean", "corrupt")},
        "direction": direction,
        "method": None if graph.get("method") is None else str(graph["method"]),
        "nodes": nodes,
        "edges": edges,
        "in_circuit": in_circuit,
        "patterns": patterns,
        "faithfulness": faith,
    }


def _page_data(g: dict[str, Any], max_edges: int) -> dict[str, Any]:
    """What the page's script reads: the top ``max_edges`` edges by |score| (plus every circuit
    edge), each with its rank among all edges."""
    edges = g["edges"]
    order = sorted(range(len(edges)), key=lambda j: -abs(edges[j]["score"]))  # stable: ties keep input order
    rank = {j: r for r, j in enumerate(order)}
    circuit = set(g["in_circuit"] or [])
    keep = sorted(set(order[:max_edges]) | circuit, key=rank.__getitem__)
    out_edges = [
        {**edges[j], "rank": rank[j], "in_circuit": j in circuit} for j in keep
    ]
    return {
        **{k: g[k] for k in ("title", "tokens", "n_layers", "n_heads", "metric", "direction", "method", "nodes", "faithfulness", "patterns")},
        "edges": out_edges,
        "n_edges_total": len(edges),
        "slider_max": min(len(edges), max_edges),
        "n_in_circuit": None if g["in_circuit"] is None else len(circuit),
    }


# ----- the page ---------------------------------------------------------------------------------
def _script_json(obj: Any) -> str:
    # "</" cannot close the <script> element when escaped as "<\/" (still valid JSON).
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).replace("</", "<\\/")


def _safe_js(js: str) -> str:
    return js.replace("</script", "<\\/script")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:14px 18px;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 4px 0}
.howto{color:#444;margin:2px 0 8px 0;font-size:.93em}
.meta{color:#555;font-size:.88em;margin:2px 0 6px 0}
.tokens{margin:4px 0 8px 0;font-size:.88em}
.tok{display:inline-block;border:1px solid #bbb;border-radius:3px;padding:0 4px;margin:1px;background:#f4f4f4;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.controls{display:flex;align-items:center;gap:12px;flex-wrap:wrap;margin:6px 0;font-size:.93em}
.controls input[type=range]{width:340px}
#count{font-variant-numeric:tabular-nums;font-weight:600}
.main{display:flex;gap:14px;align-items:flex-start}
#graph{flex:1 1 auto;min-width:0;border:1px solid #ddd;border-radius:4px;background:#fff}
.side{flex:0 0 400px;width:400px;font-size:.9em}
.side h2{font-size:1em;margin:10px 0 4px 0;border-bottom:1px solid #ddd}
#info{min-height:3.2em;white-space:pre-wrap;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.92em;background:#f8f8f8;padding:4px 6px;border-radius:3px}
#pattern-note{color:#555}
.legend td{padding:1px 6px 1px 0;vertical-align:middle}
.swatch{display:inline-block;width:34px;height:16px;border-radius:3px;border:1px solid}
table.faith{border-collapse:collapse} table.faith td,table.faith th{border:1px solid #ddd;padding:1px 6px;text-align:right}
table.faith tr.near td{background:#fff3c4}
.vis-tooltip{position:absolute;visibility:hidden;padding:5px 7px;white-space:pre;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;color:#000;background:#fffbe6;border:1px solid #999;border-radius:3px;box-shadow:2px 2px 8px rgba(0,0,0,.2);pointer-events:none;z-index:5}
.foot{color:#777;font-size:.8em;margin-top:8px}
"""

# Kept in one place so the legend and the drawing cannot disagree.
COLORS = {
    "pos": "#2166ac", "neg": "#c0392b",
    "input": ("#e6e6e6", "#555555"), "head": ("#d8e7f5", "#3b6aa0"),
    "mlp": ("#fde0c5", "#b8651b"), "logits": ("#e3f1dc", "#3f7f2f"),
}

JS = r"""
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("circuit-data").textContent);
  const C = JSON.parse(document.getElementById("circuit-colors").textContent);
  const COL = 130, ROW = D.n_layers <= 8 ? 125 : D.n_layers <= 16 ? 100 : 80;  // deep models: flatter rows
  const H = D.n_heads;
  const fmt = (x) => (x === null || x === undefined) ? "n/a" : (x >= 0 ? "+" : "") + Number(x).toPrecision(4);
  const el = (id) => document.getElementById(id);
  const byId = {};
  D.nodes.forEach((n) => { byId[n.id] = n; });

  function tip(text) {               // a text tooltip (never parsed as HTML)
    const d = document.createElement("div");
    d.textContent = text;
    return d;
  }
  function nodeText(n) {
    const what = n.kind === "head" ? `attention head ${n.head} of layer ${n.layer}` :
                 n.kind === "mlp" ? `MLP of layer ${n.layer}` :
                 n.kind === "input" ? `input: token embeddings (${D.tokens.length} tokens)` : "logits (the metric)";
    let s = `${n.id}  ${what}\nnode score: ${fmt(n.score)}`;
    if (n.kind === "head") s += D.patterns[n.id] ? "\nclick: show its attention pattern" : "\n(no attention pattern stored)";
    return s;
  }
  function edgeName(e) { return `${e.source} -> ${e.target}` + (e.port ? `<${e.port}>` : ""); }
  function edgeText(e) {
    return `${edgeName(e)}\nscore: ${fmt(e.score)}\nrank ${e.rank + 1} of ${D.n_edges_total} by |score|` +
      (e.in_circuit ? "\nin the circuit" : "");
  }
  function position(n) {
    if (n.kind === "input") return { x: 0, y: 0 };
    if (n.kind === "logits") return { x: 0, y: -(D.n_layers + 1) * ROW };
    const y = -(n.layer + 1) * ROW;
    if (n.kind === "mlp") return { x: (H / 2 + 0.25) * COL, y: y - 0.45 * ROW };
    return { x: (n.head - (H - 1) / 2 - 0.5) * COL, y: y };
  }
  const inputLabel = "input\n" + (function () {
    const s = D.tokens.join("");
    return s.length > 48 ? s.slice(0, 46) + "…" : s;
  })();
  function nodeColor(n, faded) {
    const c = C[n.kind];
    if (faded) return { background: "#f7f7f7", border: "#cfcfcf", highlight: { background: c[0], border: c[1] }, hover: { background: c[0], border: c[1] } };
    return { background: c[0], border: c[1], highlight: { background: c[0], border: "#000" }, hover: { background: c[0], border: "#000" } };
  }
  const nodes = new vis.DataSet(D.nodes.map((n) => Object.assign({
    id: n.id,
    label: n.kind === "input" ? inputLabel : n.id,
    shape: "box",
    fixed: true,
    color: nodeColor(n, false),
    font: { size: n.kind === "input" || n.kind === "logits" ? 16 : 15, face: "system-ui, sans-serif" },
    margin: n.kind === "input" || n.kind === "logits" ? 8 : 6,
    title: tip(nodeText(n)),
  }, position(n))));

  const maxAbs = D.edges.reduce((m, e) => Math.max(m, Math.abs(e.score)), 0) || 1;
  const dash = { q: false, k: [9, 5], v: [2, 4] };
  const curve = { q: { enabled: false }, k: { enabled: true, type: "curvedCW", roundness: 0.12 },
                  v: { enabled: true, type: "curvedCCW", roundness: 0.12 } };
  const edges = new vis.DataSet(D.edges.map((e, i) => {
    const rel = Math.abs(e.score) / maxAbs;
    const base = e.score >= 0 ? C.pos : C.neg;
    const a = byId[e.source], b = byId[e.target];
    let smooth = e.port ? curve[e.port] : { enabled: false };
    if (a.layer === b.layer) smooth = { enabled: true, type: "curvedCCW", roundness: 0.35 };
    return {
      id: "e" + i, from: e.source, to: e.target, port: e.port, score: e.score, rank: e.rank, in_circuit: e.in_circuit,
      width: 0.6 + 7.4 * rel,
      color: { color: base, highlight: base, hover: base, opacity: 0.35 + 0.6 * rel },
      dashes: e.port ? dash[e.port] : false,
      smooth: smooth,
      arrows: { to: { enabled: true, scaleFactor: 0.45 } },
      title: tip(edgeText(e)),
    };
  }));

  const state = { k: Math.min(D.slider_max, D.default_k), circuit: false };
  const view = new vis.DataView(edges, {
    filter: (e) => state.circuit ? e.in_circuit : e.rank < state.k,
  });

  const container = el("graph");
  const network = new vis.Network(container, { nodes: nodes, edges: view }, {
    physics: false,
    layout: { hierarchical: false, improvedLayout: false },
    interaction: { hover: true, tooltipDelay: 80, dragNodes: false, selectConnectedEdges: false, zoomView: true },
    edges: { hoverWidth: 1.5, selectionWidth: 2 },
  });

  function refresh() {
    view.refresh();
    const shown = view.get();
    const touched = new Set();
    shown.forEach((e) => { touched.add(e.from); touched.add(e.to); });
    nodes.update(D.nodes.map((n) => ({ id: n.id, color: nodeColor(n, !touched.has(n.id) && n.kind !== "input" && n.kind !== "logits") })));
    const pct = D.n_edges_total ? (100 * shown.length / D.n_edges_total) : 0;
    const what = state.circuit ? "circuit edges" : `top ${state.k} edges by |score|`;
    el("count").textContent = `${what}: ${shown.length} of ${D.n_edges_total} edges (${pct.toFixed(pct < 1 ? 2 : 1)} %)`;
    container.dataset.drawnEdges = String(shown.length);
    const ft = el("faith-table");
    if (ft) {
      let best = null;
      ft.querySelectorAll("tr[data-n]").forEach((tr) => {
        const n = Number(tr.dataset.n);
        tr.classList.remove("near");
        if (best === null || Math.abs(n - shown.length) < Math.abs(Number(best.dataset.n) - shown.length)) best = tr;
      });
      if (best) best.classList.add("near");
    }
  }

  const slider = el("budget");
  slider.max = String(D.slider_max);
  slider.value = String(state.k);
  slider.addEventListener("input", () => { state.k = Number(slider.value); refresh(); });
  const cb = el("circuit-only");
  if (cb) cb.addEventListener("change", () => { state.circuit = cb.checked; slider.disabled = cb.checked; refresh(); });

  const info = el("info");
  const idle = "Hover over a node or an edge for its name and score; click a head for its attention pattern.";
  info.textContent = idle;
  network.on("hoverNode", (p) => { info.textContent = nodeText(byId[p.node]); });
  network.on("hoverEdge", (p) => { const e = D.edges[Number(p.edge.slice(1))]; info.textContent = edgeText(e); });
  network.on("blurNode", () => { info.textContent = idle; });
  network.on("blurEdge", () => { info.textContent = idle; });

  let nPanels = 0;
  function showNode(id) {
    const n = byId[id];
    const panel = el("pattern");
    panel.replaceChildren();
    const note = el("pattern-note");
    if (!n || n.kind !== "head") {
      note.textContent = n ? `${n.id}: ${nodeText(n).split("\n")[0]} — only heads have an attention pattern.` : "";
      return;
    }
    const pat = D.patterns[id];
    if (!pat) {
      const have = Object.keys(D.patterns);
      note.textContent = `No attention pattern stored for ${id}.` + (have.length ? ` Stored: ${have.join(", ")}.` : "");
      return;
    }
    note.textContent = `Attention pattern of ${id} on the clean prompt (rows: destination token, columns: source token).`;
    const div = document.createElement("div");
    div.id = "cv-pattern-" + (++nPanels);   // a fresh element for each render (one React root each)
    panel.appendChild(div);
    panel.dataset.head = id;
    CircuitsVis.render(div.id, CircuitsVis.AttentionPattern, { tokens: D.tokens, attention: pat, showAxisLabels: true });
  }
  network.on("click", (p) => {
    if (p.nodes.length) showNode(p.nodes[0]);
    else if (p.edges.length) info.textContent = edgeText(D.edges[Number(p.edges[0].slice(1))]);
  });

  refresh();
  network.once("afterDrawing", () => { document.body.dataset.ready = "1"; });
  network.fit({ maxZoomLevel: 1.35, animation: false });  // small graphs may grow a little to fill the canvas
  window.circuitGraph = { network: network, nodes: nodes, edges: edges, view: view, state: state, showNode: showNode, refresh: refresh };
})();
"""


def _legend(direction: str | None) -> str:
    if direction == "denoise":
        pos = "positive score: patching this edge's clean value into the corrupt run raises the metric"
        neg = "negative score: it lowers the metric"
    elif direction == "noise":
        pos = "positive score: patching this edge's corrupt value into the clean run raises the metric"
        neg = "negative score: it lowers the metric"
    else:
        pos, neg = "positive score", "negative score"

    def line(color: str, dash: str = "", width: float = 3) -> str:
        return (f'<svg width="44" height="12"><line x1="2" y1="6" x2="42" y2="6" stroke="{color}" '
                f'stroke-width="{width}" stroke-dasharray="{dash}"/></svg>')

    def box(kind: str) -> str:
        bg, border = COLORS[kind]
        return f'<span class="swatch" style="background:{bg};border-color:{border}"></span>'

    rows = [
        (line(COLORS["pos"]), html.escape(pos)),
        (line(COLORS["neg"]), html.escape(neg)),
        (line("#777", width=1) + line("#777", width=7), "width: |score| (relative to the largest drawn)"),
        (line("#555", width=2), "into a head's query input (or an MLP / the logits)"),
        (line("#555", "9,5", 2), "into a head's key input"),
        (line("#555", "2,4", 2), "into a head's value input"),
        (box("input") + " " + box("logits"), "input (token embeddings) at the bottom, logits at the top"),
        (box("head") + " " + box("mlp"), "attention heads a{L}.h{H} and the MLP m{L} of each layer"),
        ('<span class="swatch" style="background:#f7f7f7;border-color:#cfcfcf"></span>', "faded: no drawn edge touches it"),
    ]
    return '<table class="legend">' + "".join(f"<tr><td>{a}</td><td>{b}</td></tr>" for a, b in rows) + "</table>"


def circuit_page(graph: Mapping[str, Any], *, title: str | None = None, max_edges: int = DEFAULT_MAX_EDGES) -> str:
    """A complete standalone HTML page (str) showing the circuit ``graph`` (a dict in the circuit
    display data contract). Opens with no network: vis-network (from ``pyvis``) and, when the graph
    has attention patterns, the circuitsvis bundle are inlined.

    ``max_edges`` caps the edges the page carries and the slider's range (the top edges by |score|,
    plus every edge of ``graph["in_circuit"]``); the page still reports the graph's full edge count.

    Raises :class:`~mechattr.errors.InputError` for a graph that breaks the contract (missing keys,
    unknown node ids, ...) and :class:`MissingDependencyError` when ``pyvis`` is not installed.
    """
    if not _int(max_edges) or max_edges < 1:
        raise InputError(f"max_edges must be a positive integer, got {max_edges!r}.")
    g = _validate(graph)
    vis_version, vis_js = vis_network_js()
    data = _page_data(g, max_edges)
    data["default_k"] = (
        data["n_in_circuit"] if data["n_in_circuit"] else min(max(10, math.ceil(0.05 * len(g["edges"]))), 100)
    )
    title = title or g["title"] or "circuit graph"
    esc = html.escape

    meta_bits = []
    if g["metric"]:
        m = g["metric"]
        meta_bits.append(f"metric <b>{esc(str(m.get('name')))}</b>: clean {esc(_fmt(m.get('clean')))}, corrupt {esc(_fmt(m.get('corrupt')))}")
    if g["method"]:
        meta_bits.append(f"method <b>{esc(g['method'])}</b>")
    if g["direction"]:
        meta_bits.append(f"direction <b>{esc(g['direction'])}</b>")
    n_heads_total = sum(1 for n in g["nodes"] if n["kind"] == "head")
    meta_bits.append(f"{len(g['nodes'])} nodes ({g['n_layers']} layers × {g['n_heads']} heads: {n_heads_total} heads drawn), {len(g['edges'])} edges")
    tokens = "".join(f'<span class="tok" title="token {i}">{esc(t)}</span>' for i, t in enumerate(g["tokens"]))

    circuit_ctl = ""
    if data["n_in_circuit"] is not None:
        circuit_ctl = (f'<label><input type="checkbox" id="circuit-only"> only the circuit '
                       f'({data["n_in_circuit"]} edges from <code>result.circuit()</code>)</label>')
    capped = ""
    if len(g["edges"]) > max_edges:
        capped = f'<span title="pass max_edges= to carry more">(slider capped at the top {max_edges}: <code>max_edges=</code>)</span>'
    faith = ""
    if g["faithfulness"]:
        rows = "".join(
            f'<tr data-n="{p["n_edges"]}"><td>{p["budget"]:.4g}</td><td>{p["n_edges"]}</td><td>{p["f"]:.3f}</td></tr>'
            for p in g["faithfulness"]
        )
        faith = ('<h2>Faithfulness</h2><p>f(C) of the top-n circuit (1: the circuit recovers the full model, '
                 '0: no better than the empty circuit); the row nearest the drawn edge count is marked.</p>'
                 f'<table class="faith" id="faith-table"><tr><th>budget</th><th>edges</th><th>f</th></tr>{rows}</table>')
    how = ("How to read this: each arrow is an edge writer → reader; its score estimates how much patching that "
           "one edge changes the metric (blue raises it, red lowers it, wider = larger |score|); the slider keeps "
           "the strongest edges; hover for names and scores, click a head for its attention pattern.")

    cv = ""
    if g["patterns"]:
        cv = f"<script>{_safe_js(_circuitsvis_bundle())}</script>"
    body = f"""
<h1>{esc(title)}</h1>
<div class="howto">{esc(how)}</div>
<div class="meta">{' · '.join(meta_bits)}</div>
<div class="tokens">tokens (clean prompt): {tokens}</div>
<div class="controls">
  <label for="budget">edge budget</label>
  <input type="range" id="budget" min="0" max="1" step="1" value="0">
  <span id="count"></span>{capped}
  {circuit_ctl}
</div>
<div class="main">
  <div id="graph" style="height:{_graph_height(g['n_layers'])}px"></div>
  <div class="side">
    <h2>Hover / selection</h2>
    <div id="info"></div>
    <h2>Attention pattern</h2>
    <div id="pattern-note">Click an attention head to see its attention pattern on the clean prompt.</div>
    <div id="pattern"></div>
    <h2>Legend</h2>
    {_legend(g["direction"])}
    {faith}
  </div>
</div>
<div class="foot">Drawn with vis-network {esc(vis_version)} (Apache-2.0 / MIT){", attention patterns with circuitsvis" if g["patterns"] else ""}; generated by mechattr.</div>
"""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style>"
        f"<script>{_safe_js(vis_js)}</script>{cv}</head><body>{body}"
        f'<script type="application/json" id="circuit-data">{_script_json(data)}</script>'
        f'<script type="application/json" id="circuit-colors">{_script_json(COLORS)}</script>'
        f"<script>{JS}</script></body></html>\n"
    )


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if _num(x) else str(x)


def _graph_height(n_layers: int) -> int:
    # Tall enough that labels stay legible once the graph is fitted (see ROW in the script).
    return int(min(1500, max(640, 60 * (n_layers + 2) + 100)))


def write_circuit_page(
    graph: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None, max_edges: int = DEFAULT_MAX_EDGES
) -> Path:
    """Write :func:`circuit_page` to ``path`` atomically (a partial file never replaces a good one)."""
    from .._io import atomic_write

    text = circuit_page(graph, title=title, max_edges=max_edges)
    out = Path(path)
    atomic_write(out, text.encode("utf-8"))
    return out


def show_circuit(graph: Mapping[str, Any], *, title: str | None = None, max_edges: int = DEFAULT_MAX_EDGES,
                 height: int | None = None) -> Any:
    """The circuit page for a notebook (``IPython.display.HTML``), in an iframe so that its styles,
    element ids and Content-Security-Policy stay apart from the notebook's own."""
    try:
        from IPython.display import HTML
    except ImportError as e:
        raise MissingDependencyError("show_circuit() displays in a notebook and needs IPython: pip install ipython") from e
    page = circuit_page(graph, title=title, max_edges=max_edges)
    g_layers = graph["n_layers"]  # validated by circuit_page
    h = height or _graph_height(g_layers) + 400
    return HTML(
        f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{h}px;border:0" '
        'sandbox="allow-scripts"></iframe>'
    )
