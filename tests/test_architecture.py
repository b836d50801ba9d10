"""The package's layering, read from its source with ``ast`` (nothing is imported).

Rules checked:

1. No import cycle between mechattr modules. Every ``import``/``from ... import`` statement
   anywhere in a module is an edge -- at module level AND inside functions, methods, ``try``
   blocks and ``if`` blocks -- because a function-level import that closes a circle only hides
   the circle until the function runs. The one exception is an import under
   ``if TYPE_CHECKING:``: it never runs, so it is NOT an edge (annotations that need it are
   strings under ``from __future__ import annotations``).
   ``from pkg import name`` is an edge to ``pkg.name`` when that is a module of the package,
   otherwise to ``pkg`` itself (its ``__init__``). Importing ``a.b.c`` is an edge to ``a.b.c``
   only; the implicit run of the parent ``__init__`` files is not counted (otherwise every
   module would form a circle with the top-level ``mechattr/__init__.py`` that re-exports it).
2. Only ``mechattr/tl/`` imports ``transformer_lens`` (anywhere in the file, TYPE_CHECKING
   blocks included: a name from TransformerLens belongs behind the adapter).
3. The layers of ``docs/architecture.md``: a module imports only modules of its own layer or
   of layers below it (same edges as rule 1). A module the table does not name is not checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mechattr"


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, skip_type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if skip_type_checking and isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = PKG) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """(edges between mechattr modules, external top-level imports per module incl. TYPE_CHECKING)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    external: dict[str, list[str]] = {m: [] for m in modules}
    for mod, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_pkg = path.name == "__init__.py"
        for node in _imports(tree, skip_type_checking=False):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                _absolute(node, mod, is_pkg)]
            external[mod].extend(n.split(".")[0] for n in names)
        for node in _imports(tree, skip_type_checking=True):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                src = _absolute(node, mod, is_pkg)
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            for t in targets:
                # `import mechattr.a.b` -> mechattr.a.b; a name below a module -> that module
                while t and t not in modules and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in modules and t != mod:
                    edges[mod].add(t)
    return edges, external


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(edges):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return out


def test_no_import_cycles():
    edges, _ = import_graph()
    assert len(edges) > 40, "the package was not found"
    cycles = find_cycles(edges)
    assert not cycles, "import cycles between mechattr modules:\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_only_tl_package_imports_transformer_lens():
    _, external = import_graph()
    offenders = sorted(m for m, names in external.items()
                       if "transformer_lens" in names and not (m == "mechattr.tl" or m.startswith("mechattr.tl.")))
    assert not offenders, f"modules outside mechattr/tl/ import transformer_lens: {offenders}"


# Lowest first; a module belongs to the layer of the longest prefix that names it. Keep in step
# with the table in docs/architecture.md.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mechattr.errors", "mechattr.progress", "mechattr._io", "mechattr.options",
              "mechattr.quadrature", "mechattr.validation.stats")),
    ("tl", ("mechattr.tl",)),
    ("targets", ("mechattr.targets",)),
    ("contract", ("mechattr.contract",)),
    ("method helpers", ("mechattr.baselines", "mechattr.perturb", "mechattr.knn")),
    ("methods", ("mechattr.methods",)),
    ("registry", ("mechattr.registry",)),
    ("results", ("mechattr.attribution", "mechattr.display", "mechattr.plots")),
    ("api", ("mechattr.api",)),
    ("applications", ("mechattr.linking", "mechattr.dataset", "mechattr.zoo", "mechattr.groundtruth",
                      "mechattr.circuits", "mechattr.sensitivity")),
    ("validation", ("mechattr.validation",)),
    ("report", ("mechattr.report",)),
    ("explain", ("mechattr.explain",)),
    ("entry points", ("mechattr.cli", "mechattr.__main__")),
]


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and (best is None or len(pre) > best[0]):
                best = (len(pre), i)
    return None if best is None else best[1]


def layer_violations(edges: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, targets in edges.items():
        lm = layer_of(mod)
        for t in targets:
            lt = layer_of(t)
            if lm is not None and lt is not None and lt > lm:
                out.append(f"{mod} ({LAYERS[lm][0]}) imports {t} ({LAYERS[lt][0]})")
    return sorted(out)


def test_layers_import_only_downwards():
    edges, _ = import_graph()
    bad = layer_violations(edges)
    assert not bad, "imports against the layering of docs/architecture.md:\n" + "\n".join(bad)
    # the check can fail: an upward edge is reported
    assert layer_violations({"mechattr.contract": {"mechattr.api"}}) == [
        "mechattr.contract (contract) imports mechattr.api (api)"]


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_checker_sees_cycles_at_any_depth(tmp_path):
    """The checker itself can fail: function-level and relative imports close a circle,
    a TYPE_CHECKING import does not."""
    root = tmp_path / "mechattr"
    _write(root, "__init__.py", "")
    _write(root, "a.py", "from .b import f\n")
    _write(root, "b.py", "def f():\n    from . import a\n    return a\n")
    _write(root, "sub/__init__.py", "")
    _write(root, "sub/c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n")
    _write(root, "d.py", "from .sub.c import y\nimport transformer_lens\n")
    edges, external = import_graph(root)
    assert find_cycles(edges) == [["mechattr.a", "mechattr.b"]]
    assert edges["mechattr.sub.c"] == set()
    assert "transformer_lens" in external["mechattr.d"]
    _write(root, "b.py", "def f():\n    return 1\n")
    assert find_cycles(import_graph(root)[0]) == []


DOC = PKG.parent / "docs" / "architecture.md"


def _example_code() -> str:
    text = DOC.read_text()
    section = text[text.index("## Adding a method"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("```", start)]


def test_architecture_doc_example_runs(capsys):
    """The 'Adding a method' example of docs/architecture.md, run as written: it registers a
    method and runs it through the API, the CLI and validation. The registration is removed
    afterwards so the method does not leak into other tests."""
    from mechattr import contract

    code = _example_code()
    assert "ma.register(" in code and "ma.attribute(" in code and "main([" in code and "ma.validate(" in code
    name = "gradient_norm_demo"
    assert name not in contract.registered()
    try:
        exec(compile(code, str(DOC), "exec"), {"__name__": "architecture_example"})
    finally:
        contract._METHODS.pop(name, None)
    out = capsys.readouterr().out
    # the CLI printed the method's table, and validation reported on the new method
    assert f"method: {name}" in out
    assert name in out.split(f"method: {name}", 1)[1]
