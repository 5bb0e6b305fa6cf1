"""CTG signals: WFDB records read, FHR and UC cleaned, resampled to the model's rate."""
