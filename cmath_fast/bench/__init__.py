"""Benchmark support: the fixed shapes, timing, the results schema (CSV), the report, the
device-op counter. ``pytest bench/`` runs the GPU suite; ``cmath-fast bench`` the rest."""
