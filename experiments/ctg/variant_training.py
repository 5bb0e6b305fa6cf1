"""Training a CTG network variant: the product's fit (:mod:`stages.ctg.models.training`) plus
what a :class:`experiments.ctg.settings.Variant` switches on.

- ``n_members`` > 1: several seeded networks (seeds ``seed + 1000 j``) averaged;
- ``crop_minutes`` > 0: each network trains on random crops of the window redrawn every epoch
  and scores a record by averaging over ``tta_crops`` fixed crops (:mod:`experiments.ctg.crops`);
- ``summary_skip``: the window means of the input channels beside the LSTM state;
- ``ph_loss_weight`` > 0: a second output regresses the pH during training
  (:mod:`experiments.ctg.multitask`);
- ``pretrain_epochs`` > 0: masked-FHR pretraining of the encoder on the fit's own records
  (:mod:`experiments.ctg.pretrain`).

The averaging over members and crops is one Keras model (standard layers only), so the
out-of-fold predictions are computed as a served model would compute them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from experiments.ctg import crops, multitask, pretrain
from experiments.ctg.settings import Variant
from stages.common.ml.training import class_weights, epoch_timer, seed_everything
from stages.ctg.models import network
from stages.ctg.models.settings import TrainCtg
from stages.ctg.models.training import (
    Fit,
    FitResult,
    early_stopping,
    history_curves,
    inner_split,
)


def build_variant(seq_len: int, net: TrainCtg, variant: Variant, name: str) -> Any:
    """The product's network, with the input channels' window means beside the LSTM state when
    ``summary_skip`` (signal loss alone predicts acidemia, AUC ~0.6)."""
    import keras

    if not variant.summary_skip:
        return network.build_model(seq_len, net, name=name)
    inp = keras.Input(shape=(seq_len, network.N_CHANNELS), name="ctg")
    x = network.encoder(inp, net)
    summary = keras.layers.GlobalAveragePooling1D(name="summary")(inp)
    x = keras.layers.Concatenate(name="with_summary")([x, summary])
    return network.compiled(inp, network.classifier_head(x, net), net.learning_rate, name)


def averaged_model(members: list[Any], seq_len: int, crop_len: int, offsets: np.ndarray) -> Any:
    """One model averaging ``members`` over the crops at ``offsets`` (``crop_len`` 0: the whole
    window); the single member itself when there is one and no cropping."""
    import keras

    if len(members) == 1 and not crop_len:
        return members[0]
    inp = keras.Input(shape=(int(seq_len), network.N_CHANNELS), name="ctg")
    views = [inp]
    if crop_len:
        views = [
            keras.layers.Cropping1D(
                (int(o), int(seq_len) - int(o) - int(crop_len)), name=f"crop{o}"
            )(inp)
            for o in offsets
        ]
    outs = [m(v) for m in members for v in views]
    out = outs[0] if len(outs) == 1 else keras.layers.Average(name="mean_probability")(outs)
    return keras.Model(inp, out, name="ctg_average")


def _crop_batches(x: np.ndarray, y: np.ndarray, w: np.ndarray, batch_size: int, crop_len: int,
                  rng: np.random.Generator) -> Any:  # fmt: skip
    """Training batches of fresh random crops every epoch (a Keras ``PyDataset``); class weights
    travel as sample weights."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self.on_epoch_end()

        def __len__(self) -> int:
            return int(np.ceil(len(x) / batch_size))

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            idx = self._order[i * batch_size : (i + 1) * batch_size]
            return self._x[idx], y[idx].astype(np.float32), w[idx].astype(np.float32)

        def on_epoch_end(self) -> None:
            self._order = rng.permutation(len(x))
            self._x = crops.random_crops(x, crop_len, rng)

    return Batches()


def fit_data(
    x: np.ndarray, y: np.ndarray, tr: np.ndarray, va: np.ndarray, ph_z: np.ndarray | None,
    net: TrainCtg, crop_len: int, tta_crops: int, seed: int,
) -> tuple[dict, Any]:  # fmt: skip
    """The ``fit`` arguments and validation data of the variant's training set-up."""
    weights = class_weights(y[tr], 2)
    w = np.array([weights[int(v)] for v in y[tr]], dtype=np.float32)
    if crop_len:
        offsets = crops.crop_offsets(x.shape[1], crop_len, tta_crops)
        validation = (crops.fixed_crops(x[va], crop_len, offsets), np.tile(y[va], len(offsets)))
        rng = np.random.default_rng(seed)
        return {"x": _crop_batches(x[tr], y[tr], w, net.batch_size, crop_len, rng)}, (
            validation if va.size else None
        )
    if ph_z is not None:  # Keras 3 takes no class_weight with two outputs: per-sample weights
        data = {"x": x[tr], "y": [y[tr], ph_z[tr]], "sample_weight": [w, np.ones_like(w)],
                "batch_size": net.batch_size, "shuffle": True}  # fmt: skip
        return data, ((x[va], [y[va], ph_z[va]]) if va.size else None)
    data = {"x": x[tr], "y": y[tr], "batch_size": net.batch_size, "class_weight": weights,
            "shuffle": True}  # fmt: skip
    return data, ((x[va], y[va]) if va.size else None)


def fit_member(x: np.ndarray, y: np.ndarray, seed: int, net: TrainCtg, variant: Variant,
               ph: np.ndarray, fs_hz: float, name: str) -> FitResult:  # fmt: skip
    """One network of the variant, early-stopped on an inner validation split."""
    seed_everything(seed)
    crop_len = crops.crop_steps(variant.crop_minutes, fs_hz, x.shape[1])
    tr, va = inner_split(y, net.val_fraction, seed)
    ph_z = None
    if variant.ph_loss_weight > 0:
        ph_z = multitask.standardised_ph(ph, tr, crop_len)
    model = build_variant(crop_len or x.shape[1], net, variant, name)
    if variant.pretrain_epochs > 0:
        encoder, _ = pretrain.pretrain_encoder(x, net, variant, seed, fs_hz, f"{name}_encoder")
        pretrain.transfer_weights(encoder, model)
    trainer = model
    if ph_z is not None:
        trainer = multitask.with_ph_head(model, variant.ph_loss_weight, net.learning_rate)
    key = multitask.metric_key if ph_z is not None else str
    timer, epoch_s = epoch_timer()
    stop = [early_stopping(net.monitor, net.patience, key)] if va.size else []
    data, validation = fit_data(x, y, tr, va, ph_z, net, crop_len, variant.tta_crops, seed)
    hist = trainer.fit(**data, validation_data=validation, epochs=net.epochs,
                       callbacks=[timer, *stop], verbose=0)  # fmt: skip
    return model, history_curves(hist.history, key("val_auc")), list(epoch_s)


def fit_variant(x: np.ndarray, y: np.ndarray, seed: int, net: TrainCtg, variant: Variant,
                ph: np.ndarray, fs_hz: float) -> FitResult:  # fmt: skip
    """``n_members`` networks (each :func:`fit_member`) averaged over crops; ``ph`` aligned with
    ``y`` (the pH head's target), ``fs_hz`` the rate of ``x``."""
    members, curves, epoch_s = [], [], []
    for j in range(variant.n_members):
        m, c, t = fit_member(x, y, seed + 1000 * j, net, variant, ph, fs_hz, f"ctg_lstm_{j}")
        members.append(m)
        curves.append(c.assign(member=j))
        epoch_s += t
    crop_len = crops.crop_steps(variant.crop_minutes, fs_hz, x.shape[1])
    offsets = (
        crops.crop_offsets(x.shape[1], crop_len, variant.tta_crops)
        if crop_len
        else np.array([], int)
    )
    model = averaged_model(members, x.shape[1], crop_len, offsets)
    return model, pd.concat(curves, ignore_index=True), epoch_s


def variant_fit(
    x: np.ndarray, y: np.ndarray, ph: np.ndarray, net: TrainCtg, variant: Variant, fs_hz: float
) -> Fit:
    """:func:`fit_variant` on rows of the data: a :data:`stages.ctg.models.training.Fit`."""

    def fit(rows: np.ndarray, seed: int) -> FitResult:
        return fit_variant(x[rows], y[rows], seed, net, variant, ph[rows], fs_hz)

    return fit
