"""attention methods (being written)."""
