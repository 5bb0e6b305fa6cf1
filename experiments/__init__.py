"""Accuracy studies and research variants that are off by default (``docs/experiments.md``)."""
