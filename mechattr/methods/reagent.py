"""reagent methods (being written)."""
