"""discrete methods (being written)."""
