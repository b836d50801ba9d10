"""The offline circuit graph page (issue #15, display): a synthetic graph in the circuit display data
contract, checked as text (self-contained, vis-network inlined, bad input refused) and in headless
Chromium driven over the DevTools protocol (tests/cdp_pipe.py): it renders with no console error and
no network request, draws every node, the slider changes the drawn edges to exactly the top-k by
|score|, hovering names a node, and clicking a head shows its attention pattern (circuitsvis).

Set MECHATTR_DOCS_IMG=1 to also write the screenshot to docs/img/circuit-graph.png.
"""

from __future__ import annotations

import importlib.util
import math
import os
import random
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

from mechattr.errors import InputError

# The page reads vis-network from the pyvis wheel (the `graph` extra, part of `dev`); CI has it.
# The contract checks run first and need no pyvis, so the bad-input tests run without it.
HAVE_PYVIS = importlib.util.find_spec("pyvis") is not None
if not HAVE_PYVIS and os.environ.get("CI"):
    raise RuntimeError("CI must install pyvis (the `graph` extra, included in `dev`)")
needs_pyvis = pytest.mark.skipif(not HAVE_PYVIS, reason="needs pyvis: pip install --no-deps pyvis")

from mechattr.circuits import display as cd  # noqa: E402
from mechattr.circuits import circuit_page, show_circuit, write_circuit_page  # noqa: E402

N_LAYERS, N_HEADS, N_EDGES = 2, 4, 40
PATTERN_HEADS = ("a0.h1", "a1.h2")
TOKENS = ["When", " Mary", " and", " John", " went", " to", " the", " store", ",", " John", " gave", " a", " drink", " to"]


def make_graph(seed: int = 0) -> dict:
    """2 layers x 4 heads + MLPs, 40 random edges among the legal writer -> reader pairs, patterns
    for two heads, a circuit and a faithfulness curve."""
    rng = random.Random(seed)
    nodes = [{"id": "input", "kind": "input", "layer": -1, "head": None, "score": None}]
    for L in range(N_LAYERS):
        for h in range(N_HEADS):
            nodes.append({"id": f"a{L}.h{h}", "kind": "head", "layer": L, "head": h, "score": rng.uniform(-1, 1)})
        nodes.append({"id": f"m{L}", "kind": "mlp", "layer": L, "head": None, "score": rng.uniform(-1, 1)})
    nodes.append({"id": "logits", "kind": "logits", "layer": N_LAYERS, "head": None, "score": None})
    cands = []
    for w in nodes:
        if w["kind"] not in ("input", "head", "mlp"):
            continue
        for r in nodes:
            if r["kind"] == "head" and r["layer"] > w["layer"]:
                cands += [(w["id"], r["id"], p) for p in "qkv"]
            elif r["kind"] == "mlp" and (r["layer"] > w["layer"] or (w["kind"] == "head" and w["layer"] == r["layer"])):
                cands.append((w["id"], r["id"], None))
            elif r["kind"] == "logits":
                cands.append((w["id"], r["id"], None))
    edges = [{"source": s, "target": t, "port": p, "score": rng.choice([-1, 1]) * rng.expovariate(1.0)}
             for s, t, p in rng.sample(cands, N_EDGES)]
    edges.sort(key=lambda e: -abs(e["score"]))
    n = len(TOKENS)
    patterns = {}
    for hid in PATTERN_HEADS:
        rows = []
        for i in range(n):
            w = [math.exp(rng.gauss(0, 1.5)) if j <= i else 0.0 for j in range(n)]
            rows.append([x / sum(w) for x in w])
        patterns[hid] = rows
    circuit = sorted(rng.sample(range(N_EDGES), 9))
    return {
        "title": "synthetic IOI-like circuit", "tokens": TOKENS, "n_layers": N_LAYERS, "n_heads": N_HEADS,
        "metric": {"name": "logit_diff", "clean": 3.2, "corrupt": -0.4}, "direction": "denoise",
        "method": "eap_ig_inputs", "nodes": nodes, "edges": edges, "in_circuit": circuit, "patterns": patterns,
        "faithfulness": [{"budget": b, "n_edges": max(1, round(b * N_EDGES)), "f": 1 - math.exp(-8 * b)}
                         for b in (0.05, 0.1, 0.2, 0.5, 1.0)],
    }


def _key(e: dict) -> tuple:
    return (e["source"], e["target"], e["port"])


def _pyvis_js() -> str:
    """vis-network as shipped in the pyvis wheel, found here independently of mechattr's helper."""
    root = Path(importlib.util.find_spec("pyvis").submodule_search_locations[0])
    files = sorted(root.glob("lib/vis-*/vis-network.min.js"),
                   key=lambda p: tuple(int(x) for x in p.parent.name[4:].split(".")))
    return files[-1].read_text(encoding="utf-8")


# ----- the page as text ---------------------------------------------------------------------------
@needs_pyvis
def test_page_is_self_contained_and_inlines_vis_network():
    page = circuit_page(make_graph())
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<link\b", page, re.I)
    assert _pyvis_js().replace("</script", "<\\/script") in page  # the whole library, inlined
    assert "CircuitsVis" in page and "AttentionPattern" in page  # circuitsvis bundle for the patterns
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "How to read this" in page and "class=\"legend\"" in page
    assert "40 edges" in page


@needs_pyvis
def test_page_without_patterns_leaves_circuitsvis_out():
    g = make_graph()
    g.pop("patterns")
    page = circuit_page(g)
    assert "CircuitsVis.render(" in page  # the click handler's call, in our script
    assert "var CircuitsVis=" not in page  # but not the 1.3 MB bundle


@needs_pyvis
def test_write_circuit_page_is_atomic(tmp_path):
    g = make_graph()
    out = write_circuit_page(g, tmp_path / "sub" / "c.html", title="My circuit")
    assert out.read_text(encoding="utf-8") == circuit_page(g, title="My circuit")
    assert "<title>My circuit</title>" in out.read_text(encoding="utf-8")
    assert [p.name for p in out.parent.iterdir()] == ["c.html"]


@needs_pyvis
def test_max_edges_caps_what_the_page_carries():
    g = make_graph()
    data = cd._page_data(cd._validate(g), 5)
    assert data["slider_max"] == 5 and data["n_edges_total"] == N_EDGES
    ranked = sorted(g["edges"], key=lambda e: -abs(e["score"]))
    carried = {_key(e) for e in data["edges"]}
    # the top 5 plus every circuit edge, nothing else
    assert carried == {_key(e) for e in ranked[:5]} | {_key(g["edges"][j]) for j in g["in_circuit"]}
    assert "slider capped at the top 5" in circuit_page(g, max_edges=5)


@needs_pyvis
def test_show_circuit_in_a_notebook(monkeypatch):
    class FakeHTML:
        def __init__(self, data):
            self.data = data

    fake = types.ModuleType("IPython.display")
    fake.HTML = FakeHTML
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", fake)
    out = show_circuit(make_graph())
    assert isinstance(out, FakeHTML) and out.data.startswith("<iframe srcdoc=")
    assert "vis-network" in out.data and "<script>" not in out.data  # escaped into the attribute

    monkeypatch.setitem(sys.modules, "IPython.display", None)
    with pytest.raises(cd.MissingDependencyError, match="pip install ipython"):
        show_circuit(make_graph())


def test_missing_pyvis_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyvis" else real(name, *a))
    cd.vis_network_js.cache_clear()
    try:
        with pytest.raises(cd.MissingDependencyError, match=r"pip install .*pyvis"):
            circuit_page(make_graph())
    finally:
        cd.vis_network_js.cache_clear()


def _drop(key):
    def f(g):
        g.pop(key)
    return f


def _set_edge(i, **kw):
    def f(g):
        g["edges"][i].update(kw)
    return f


BAD = {
    "missing edges": (_drop("edges"), r"'edges'"),
    "missing nodes": (_drop("nodes"), r"'nodes'"),
    "missing tokens": (_drop("tokens"), r"'tokens'"),
    "unknown source": (_set_edge(3, source="a7.h0"), r"graph\['edges'\]\[3\].*'a7\.h0'"),
    "unknown target": (_set_edge(5, target="a1.h9"), r"graph\['edges'\]\[5\].*'a1\.h9'.*Did you mean"),
    "bad port": (_set_edge(0, target="logits", port="q", source="input"), r"port 'q'"),
    "downward edge": (_set_edge(0, source="a1.h0", target="a0.h1", port="q"), r"upward"),
    "nan score": (_set_edge(2, score=float("nan")), r"finite"),
    "pattern of unknown head": (lambda g: g["patterns"].__setitem__("a5.h0", [[1.0]]), r"'a5\.h0'"),
    "pattern wrong shape": (lambda g: g["patterns"].__setitem__("a0.h0", [[1.0]]), r"14 x 14"),
    "in_circuit out of range": (lambda g: g.__setitem__("in_circuit", [0, 99]), r"in_circuit"),
    "head id vs layer": (lambda g: g["nodes"][1].__setitem__("layer", 1), r"a\{L\}\.h\{H\}"),
    "duplicate node": (lambda g: g["nodes"].append(dict(g["nodes"][1])), r"twice"),
    "bad direction": (lambda g: g.__setitem__("direction", "sideways"), r"denoise"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_graph_is_refused_with_a_clear_error(case):
    change, pattern = BAD[case]
    g = make_graph()
    change(g)
    with pytest.raises(InputError, match=pattern):
        circuit_page(g)


def test_not_a_dict():
    with pytest.raises(InputError, match="must be a dict"):
        circuit_page([1, 2, 3])  # type: ignore[arg-type]


# ----- the page in headless Chromium --------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and os.environ.get("CI"):
    raise RuntimeError("CI must install Debian chromium for the browser tests (see .ci/run)")
_no_browser = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (apt-get install chromium); CI installs it")


def needs_browser(f):
    return needs_pyvis(_no_browser(f))


@pytest.fixture(scope="module")
def graph():
    return make_graph()


@pytest.fixture(scope="module")
def browser(graph, tmp_path_factory):
    from cdp_pipe import Browser

    d = tmp_path_factory.mktemp("circuit-browser")
    path = write_circuit_page(graph, d / "circuit.html")
    b = Browser(CHROMIUM, d / "profile", width=1400, height=1000)
    try:
        b.open()
        b.navigate(path.as_uri())
        b.wait_js("document.body.dataset.ready === '1'")
        b.page_url = path.as_uri()
        yield b
    finally:
        b.close()


def _drawn(b) -> list[tuple]:
    return [tuple(x) for x in b.eval(
        "circuitGraph.view.get().map(e => [e.from, e.to, e.port])")]


def _node_xy(b, node_id: str) -> tuple[float, float]:
    """Viewport coordinates of a drawn node's centre."""
    return tuple(b.eval(f"""(() => {{
        const n = circuitGraph.network, p = n.canvasToDOM(n.getPositions([{node_id!r}])[{node_id!r}]);
        const r = document.getElementById('graph').getBoundingClientRect();
        return [r.left + p.x, r.top + p.y]; }})()"""))


@needs_browser
def test_renders_without_console_error_or_network(browser):
    assert browser.console_problems() == []
    assert browser.requests() == [browser.page_url]
    assert browser.eval("typeof vis.Network") == "function"
    assert browser.eval("document.querySelector('#graph canvas') !== null")


@needs_browser
def test_draws_every_node(browser, graph):
    drawn = browser.eval("Object.keys(circuitGraph.network.getPositions())")
    assert sorted(drawn) == sorted(n["id"] for n in graph["nodes"])
    # layers go bottom -> top: input lowest on screen, logits highest, layer 0 below layer 1
    y = {k: _node_xy(browser, k)[1] for k in ("input", "a0.h0", "m0", "a1.h0", "logits")}
    assert y["input"] > y["a0.h0"] > y["a1.h0"] > y["logits"]
    assert y["a0.h0"] > y["m0"] > y["a1.h0"]


@needs_browser
def test_slider_sets_the_top_k_edges(browser, graph):
    ranked = [_key(e) for e in sorted(graph["edges"], key=lambda e: -abs(e["score"]))]
    before = _drawn(browser)
    k0 = int(browser.eval("document.getElementById('budget').value"))
    assert sorted(before) == sorted(ranked[:k0])
    rect = browser.eval("(() => { const r = document.getElementById('budget').getBoundingClientRect();"
                        " return [r.left, r.top, r.width, r.height]; })()")
    counts = []
    for frac in (0.92, 0.15):  # real mouse clicks on the slider track
        browser.click(rect[0] + frac * rect[2], rect[1] + rect[3] / 2)
        k = int(browser.eval("document.getElementById('budget').value"))
        drawn = _drawn(browser)
        assert sorted(drawn) == sorted(ranked[:k]), frac
        assert f": {k} of {N_EDGES} edges ({100 * k / N_EDGES:.1f} %)" in browser.eval("document.getElementById('count').textContent")
        assert int(browser.eval("Object.keys(circuitGraph.network.body.edges).length")) == k
        counts.append(k)
    assert counts[0] > k0 > counts[1] > 0
    assert browser.console_problems() == []


@needs_browser
def test_circuit_checkbox_shows_the_circuit(browser, graph):
    cb = browser.eval("(() => { const r = document.getElementById('circuit-only').getBoundingClientRect();"
                      " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    browser.click(*cb)
    assert sorted(_drawn(browser)) == sorted(_key(graph["edges"][j]) for j in graph["in_circuit"])
    browser.click(*cb)
    k = int(browser.eval("document.getElementById('budget').value"))
    assert len(_drawn(browser)) == k


@needs_browser
def test_hover_names_the_node_and_its_score(browser, graph):
    node = next(n for n in graph["nodes"] if n["id"] == "a1.h2")
    browser.mouse("mouseMoved", *_node_xy(browser, "a1.h2"))
    text = browser.wait_js("(() => { const t = document.getElementById('info').textContent;"
                           " return t.startsWith('a1.h2') ? t : ''; })()")
    assert f"{node['score']:+.4g}"[:5] in text
    browser.mouse("mouseMoved", 5, 5)


@needs_browser
def test_click_on_a_head_shows_its_pattern(browser):
    browser.click(*_node_xy(browser, "a0.h1"))
    browser.wait_js("document.getElementById('pattern').dataset.head === 'a0.h1'")
    # circuitsvis rendered into the panel: wait for its drawn content
    browser.wait_js("document.querySelector('#pattern canvas, #pattern svg') !== null", timeout=15)
    assert "a0.h1" in browser.eval("document.getElementById('pattern-note').textContent")
    browser.click(*_node_xy(browser, "a0.h0"))  # a head without a stored pattern says so
    assert "No attention pattern stored for a0.h0" in browser.eval("document.getElementById('pattern-note').textContent")
    browser.click(*_node_xy(browser, "a1.h2"))
    browser.wait_js("document.getElementById('pattern').dataset.head === 'a1.h2'"
                    " && document.querySelector('#pattern canvas, #pattern svg') !== null", timeout=15)
    assert browser.console_problems() == []


@needs_browser
def test_screenshot(browser, tmp_path):
    rect = browser.eval("(() => { const r = document.getElementById('budget').getBoundingClientRect();"
                        " return [r.left, r.top, r.width, r.height]; })()")
    browser.click(rect[0] + 0.4 * rect[2], rect[1] + rect[3] / 2)  # about 15 of the 40 edges
    browser.click(*_node_xy(browser, "a1.h2"))
    browser.wait_js("document.getElementById('pattern').dataset.head === 'a1.h2'"
                    " && document.querySelector('#pattern canvas, #pattern svg') !== null", timeout=15)
    browser.mouse("mouseMoved", *_node_xy(browser, "a1.h2"))
    shot = tmp_path / "circuit-graph.png"
    data = browser.screenshot(shot)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 1400  # PNG width
    assert len(data) > 40_000  # a blank page compresses to a few kB
    if os.environ.get("MECHATTR_DOCS_IMG"):
        dest = Path(__file__).resolve().parents[1] / "docs" / "img" / "circuit-graph.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)


@needs_browser
def test_network_attempt_would_be_caught(graph, tmp_path):
    # The same page plus one external image: the detectors above must see it, otherwise they
    # could not fail.
    from cdp_pipe import Browser

    leaky = tmp_path / "leaky.html"
    leaky.write_text(circuit_page(graph).replace("<body>", '<body><img src="https://example.com/x.png">', 1))
    b = Browser(CHROMIUM, tmp_path / "profile")
    try:
        b.open()
        b.navigate(leaky.as_uri())
        b.wait_js("document.body.dataset.ready === '1'")
        assert any("example.com" in p for p in b.console_problems()) or any("example.com" in u for u in b.requests())
    finally:
        b.close()


@needs_pyvis
def test_tokens_and_title_cannot_inject_markup():
    g = make_graph()
    g["tokens"] = ["</script><b>x", *TOKENS[1:]]
    page = circuit_page(g, title="<i>t</i>")
    assert "<i>t</i>" not in page
    assert "&lt;/script&gt;&lt;b&gt;x" in page  # the token row, escaped
    # only in the JSON data, where "<\/script>" cannot close its <script> element
    assert page.count("<b>x") == page.count("<\\/script><b>x") == 1
