"""Machine-learning utilities both modalities share: metrics, calibration, splits, paired tests,
plots, seeding.
"""
