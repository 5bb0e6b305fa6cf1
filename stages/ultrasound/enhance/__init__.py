"""Speckle reduction and contrast enhancement of ultrasound images."""
