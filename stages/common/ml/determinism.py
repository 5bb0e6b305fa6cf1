"""One switch that makes TensorFlow/Keras training repeatable: same seed, same weights.

``keras.utils.set_random_seed`` seeds Python, NumPy and TensorFlow;
``tf.config.experimental.enable_op_determinism`` makes TF pick deterministic kernels (and raise
on ops that have none); the thread pools are fixed because a reduction split over a different
number of threads adds floats in a different order. Results then repeat on the same hardware and
software with the same thread counts, not across them (TF's guarantee).

Thread counts can only be set before TensorFlow starts its runtime (the first op); a later call
keeps the counts already in force and logs them.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# Intra-op threads unless the caller or FETAL_TF_INTRA_THREADS says otherwise: the reference
# machine's cores, so a run elsewhere reproduces its figures.
INTRA_THREADS_ENV = "FETAL_TF_INTRA_THREADS"
DEFAULT_INTRA_THREADS = 2


def intra_op_threads(threads: int | None = None) -> int:
    """``threads`` if given, else ``$FETAL_TF_INTRA_THREADS``, else ``DEFAULT_INTRA_THREADS``."""
    if threads is None:
        threads = int(os.environ.get(INTRA_THREADS_ENV) or DEFAULT_INTRA_THREADS)
    if threads < 1:
        raise ValueError(f"intra-op threads must be >= 1, got {threads}")
    return threads


def deterministic_tensorflow(seed: int, intra_threads: int | None = None) -> None:
    """Seed everything, enable TF op determinism, fix thread pools (1 inter-op, ``intra_threads``).

    Parameters
    ----------
    seed
        Seed for Python's ``random``, NumPy's legacy global generator and TensorFlow.
    intra_threads
        Threads within one op (see :func:`intra_op_threads`). Inter-op threads are 1: ops then
        run one at a time, in graph order.
    """
    import keras
    import tensorflow as tf

    intra = intra_op_threads(intra_threads)
    threading = tf.config.threading
    try:
        threading.set_inter_op_parallelism_threads(1)
        threading.set_intra_op_parallelism_threads(intra)
    except RuntimeError:  # the runtime already started: its counts stay (and are logged)
        current = (
            threading.get_inter_op_parallelism_threads(),
            threading.get_intra_op_parallelism_threads(),
        )
        if current != (1, intra):
            log.warning(
                "TensorFlow already running with inter/intra-op threads %s, not (1, %d): "
                "call deterministic_tensorflow before the first TF op",
                current,
                intra,
            )
    keras.utils.set_random_seed(int(seed))
    tf.config.experimental.enable_op_determinism()
