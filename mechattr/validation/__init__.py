"""Validation built in: sanity checks, faithfulness curves, agreement, baselines, ROAR.

>>> report = mechattr.validate(model, prompts, target=" Paris", methods=["ig", "saliency"])
>>> report.summary(); report.to_dataframe(); report.to_html("validation.html")

See ``docs/validation.md`` for what each check computes and its criterion.
"""

from ._result import CheckResult, Verdict
from .core import CHECKS, DEFAULT_METHODS, validate
from .report import ValidationReport
from .stats import kendall, rankdata, spearman

__all__ = [
    "validate",
    "ValidationReport",
    "CheckResult",
    "Verdict",
    "CHECKS",
    "DEFAULT_METHODS",
    "spearman",
    "kendall",
    "rankdata",
]
