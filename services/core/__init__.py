"""Neutral foundations every package may import: errors, progress, data-file locations."""
