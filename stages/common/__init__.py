"""Code both modalities share: params, atomic I/O, splits, metrics, tracking, data checks."""
