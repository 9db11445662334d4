"""Nissa: every topic into one DuckDB file (exactly once), views of the adaptation history, read-only SQL."""
