"""Performance benchmarks (python -m bench.<name>) printing markdown tables."""
