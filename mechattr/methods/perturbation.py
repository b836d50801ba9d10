"""perturbation methods (being written)."""
