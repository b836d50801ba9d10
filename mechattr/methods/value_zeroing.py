"""value_zeroing methods (being written)."""
