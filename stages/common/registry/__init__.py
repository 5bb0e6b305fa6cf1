"""The one place that talks to MLflow: runs, registration, the promotion decision, its history,
model cards and provenance.
"""
