"""``ma.explain``: the answer first, then the evidence. See :mod:`mechattr.explain.core`."""

from .checks import CONTROLS, Trust, trust_rule
from .core import explain
from .result import Explanation, MethodResult
from .methods import BUDGETS, select_methods
from .verdict import Verdict, decide

__all__ = ["explain", "Explanation", "MethodResult", "Trust", "trust_rule", "Verdict", "decide",
           "BUDGETS", "CONTROLS", "select_methods"]
