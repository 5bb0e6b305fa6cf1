"""The fetal-mlops stages and their helpers.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it loads, and turns its oneDNN kernels on
by itself only on CPUs with AVX-512 neural-network instructions. Without them (the AMD EPYC of
2026-11-29) its own convolutions trained the U-Net about 2x slower (15.0 against 7.4 s per epoch
with op determinism; ``python -m bench.segmenter_cost`` measures today's networks against the
core, docs/benchmarks.md "Head segmenter training cost"). Importing any project module runs
this file first, so a process that imports the project before TensorFlow gets one kernel choice
on every machine kind; the figures of ``dvc.lock`` depend on it.
An explicit ``TF_ENABLE_ONEDNN_OPTS=0`` in the environment still wins.
"""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
