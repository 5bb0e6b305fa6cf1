"""Using the registered ultrasound models: predictors and ``fetal score-us``."""
