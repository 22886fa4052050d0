"""Benchmarks for the chiefofstate node: `python -m benchmarks` (see docs/performance.md)."""
