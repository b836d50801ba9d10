"""Offline prompt-pair generators (filled in below)."""
