"""Micro-benchmarks run as ``python -m bench <name>``; one module per benchmark."""
