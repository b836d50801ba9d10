"""Circuits (issue #15). This branch carries only the display; the lead merges it with the rest of
the package (edge attribution, patching, faithfulness), which lives on another branch."""

from .display import MissingDependencyError, circuit_page, show_circuit, write_circuit_page

__all__ = ["circuit_page", "write_circuit_page", "show_circuit", "MissingDependencyError"]
