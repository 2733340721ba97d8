"""Side-by-side benchmarks: ``python -m bench`` (see ``--help`` and README "Performance")."""
