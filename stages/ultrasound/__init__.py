"""Fetal brain ultrasound (FETAL_PLANES_DB + HC18): pipeline stages and their helpers."""
