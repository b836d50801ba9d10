"""The pieces a check hands back: long-format numbers, per-method verdicts, figures, notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    """Outcome of one check for one method. ``passed`` is None where the check has no criterion."""

    value: float | None
    passed: bool | None = None
    threshold: float | None = None
    criterion: str = ""
    note: str = ""


@dataclass
class CheckResult:
    name: str
    records: list[dict[str, Any]] = field(default_factory=list)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)  # curves and matrices for the report
    notes: list[str] = field(default_factory=list)
    unavailable: str | None = None  # why the check could not run (never counted as a pass)

    def add(self, method: str | None, metric: str, value: float, **keys: Any) -> None:
        self.records.append({"check": self.name, "method": method, "metric": metric, "value": float(value), **keys})
