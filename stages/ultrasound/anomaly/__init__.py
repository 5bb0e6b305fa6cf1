"""The anomaly score: a plane-conditioned autoencoder of brain crops, its threshold, its proxies."""
