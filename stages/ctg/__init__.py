"""Fetal distress from intrapartum CTG (CTU-UHB): pipeline stages and their helpers."""
