"""The fetal-mlops stages and their helpers.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, and turns its oneDNN kernels on
by itself only on CPUs with AVX-512 neural-network instructions. Without them (the AMD EPYC of
2026-11-29) its own convolutions train the U-Net 2-3x slower (``python -m bench.unet_epoch``).
Every stage, the CLI and the served models import this package before TensorFlow, so setting it
here gives one kernel choice on every machine kind; the figures of ``dvc.lock`` depend on it.
An explicit ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment still wins.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
