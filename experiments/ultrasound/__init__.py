"""Ultrasound studies and research variants (``python -m experiments.ultrasound.<name>``)."""
