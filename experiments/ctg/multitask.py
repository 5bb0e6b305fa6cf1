"""A multi-task variant of the CTG network: the acidemia output plus a regression of the pH.

The ``ph_loss_weight`` variant. The label is a threshold on the umbilical-artery pH; the pH
itself says how far each record is from it. A second, linear output on the same dense
representation (the ``dense`` layer of :func:`stages.ctg.models.network.build_model`) regresses
the pH, standardised with the mean and SD of the fit's training records, and the two are
trained jointly:
``loss = BCE(acidemia) + ph_loss_weight * MSE(standardised pH)``. The class weights of the
~1:4 imbalance apply to the BCE term as per-sample weights (Keras 3 refuses ``class_weight``
with several outputs); the pH term is unweighted.

Only the classifier is kept: the two-output training model shares its layers with the network
it was built from, whose single output is the acidemia probability, so that network (trained
through the two-output one) is what is returned, averaged, saved and served, unchanged.

Keras is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DISTRESS_OUTPUT = "distress"  # build_model's output layer
PH_OUTPUT = "ph"
# With two outputs Keras prefixes each output's metrics with its name.
METRIC_KEYS = {"auc": f"{DISTRESS_OUTPUT}_auc", "val_auc": f"val_{DISTRESS_OUTPUT}_auc"}


def metric_key(name: str) -> str:
    """The history / early-stopping key of a single-output metric name in the two-output model
    (``val_auc`` -> ``val_distress_auc``; the losses keep their names: total loss)."""
    return METRIC_KEYS.get(name, name)


def standardised_ph(ph: np.ndarray | None, train_idx: np.ndarray, crop_len: int) -> np.ndarray:
    """``(ph - mean) / sd`` with the mean and SD (ddof 0) of ``ph[train_idx]``.

    Raises ValueError when the pH is absent or NaN for any of the fit's records (the
    validation records' pH enters the validation loss), or with crops (``crop_len`` > 0), which
    this variant does not support.
    """
    if crop_len:
        raise ValueError("ph_loss_weight > 0 is not supported with crop_minutes > 0")
    if ph is None:
        raise ValueError("ph_loss_weight > 0 needs the pH of the training records")
    values = np.asarray(ph, dtype=np.float64)
    missing = np.flatnonzero(np.isnan(values))
    if missing.size:
        raise ValueError(
            f"ph_loss_weight > 0: pH missing (NaN) for {missing.size} training record(s), "
            f"e.g. index {missing[:5].tolist()}"
        )
    train = values[np.asarray(train_idx, dtype=int)]
    sd = float(train.std())
    return ((values - float(train.mean())) / (sd if sd > 0 else 1.0)).astype(np.float32)


def with_ph_head(net: Any, ph_loss_weight: float, learning_rate: float) -> Any:
    """A compiled two-output model ``[distress, ph]`` sharing every layer of ``net``.

    Trains ``net`` (whose ``dense`` layer feeds the new linear ``ph`` output) when fitted with
    targets ``[label, standardised pH]`` and sample weights ``[class weight, 1]``; its metric
    ``distress_auc`` is the classifier's AUC (``metric_key``).
    """
    import keras

    ph_out = keras.layers.Dense(1, name=PH_OUTPUT)(net.get_layer("dense").output)
    model = keras.Model(net.inputs, [net.outputs[0], ph_out], name=f"{net.name}_ph")
    model.compile(
        optimizer=keras.optimizers.Adam(float(learning_rate)),
        loss={DISTRESS_OUTPUT: "binary_crossentropy", PH_OUTPUT: "mse"},
        loss_weights={DISTRESS_OUTPUT: 1.0, PH_OUTPUT: float(ph_loss_weight)},
        metrics={DISTRESS_OUTPUT: [keras.metrics.AUC(name="auc")]},
    )
    return model
