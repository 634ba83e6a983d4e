"""restr_fast's pytest-benchmark suite: ``pytest benchmarks/ --benchmark-only``."""
