"""Side-by-side benchmarks: ``python -m bench`` (see ``--help`` and docs/performance.md)."""
