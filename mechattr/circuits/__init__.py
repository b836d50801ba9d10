"""Circuits: edge attribution patching (EAP, EAP-IG, AtP* GradDrop), exact node and edge
patching, circuit selection and faithfulness, on TransformerLens 3.x and 4.x models.

>>> import mechattr as ma
>>> res = ma.circuits.edge_attribution(model, clean, corrupt, " Mary", contrast=" John")
>>> edges = res.circuit(budget=0.05)
>>> ma.circuits.faithfulness(model, edges, clean, corrupt, " Mary", contrast=" John").f

See docs/circuits.md for the graph (names as in EAP-IG / MIB), the sign convention and how
faithfulness is computed.
"""

from . import tasks
from .attribution import METHODS, EdgeAttribution, edge_attribution
from .graph import Graph
from .display import MissingDependencyError, circuit_page, show_circuit, write_circuit_page
from .patching import (
    DEFAULT_BUDGETS,
    Faithfulness,
    FaithfulnessCurve,
    PatchResult,
    faithfulness,
    faithfulness_curve,
    faithfulness_many,
    patch,
)
from .select import enumerate_circuits, select_edges


def graph(model):
    """The circuit graph (writers, readers, edges) of a model."""
    from ..tl.adapter import as_adapter

    return Graph.of(as_adapter(model))


__all__ = [
    "edge_attribution", "EdgeAttribution", "METHODS", "Graph", "graph", "patch", "PatchResult",
    "faithfulness", "faithfulness_many", "enumerate_circuits", "Faithfulness", "faithfulness_curve", "FaithfulnessCurve", "DEFAULT_BUDGETS",
    "select_edges", "circuit_page", "write_circuit_page", "show_circuit", "MissingDependencyError", "tasks",
]
