"""Benchmarks that measure the framework; each module runs with ``python -m benchmarks.NAME``."""
