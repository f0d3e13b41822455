"""Benchmarks and load runs against a real Fluxgate stack (see bench/README.md)."""
