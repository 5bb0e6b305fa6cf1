"""Self-supervised pretraining of the CTG network's encoder by masked reconstruction of the FHR.

Before a fold's classifier is trained, its encoder (the ``conv{i}`` Conv1D + max-pool blocks and
the ``lstm`` layer of :func:`stages.ctg.models.network.build_model`, same names and shapes) learns
to fill in hidden stretches of the FHR from the rest of the record: random spans of the input are
hidden (normalised FHR and FHR-present mask set to 0, the UC channel kept), and a linear head on the
LSTM's output sequence predicts the original normalised FHR averaged over each pooled step
(``conv_pool ** conv_layers`` input steps). The loss is the mean squared error on the hidden steps
where the FHR was recorded (temporal sample weights); nothing else counts, and no label is used. The
spans are redrawn every epoch. The trained ``conv*`` and ``lstm`` weights are then copied by layer
name into the freshly built classifier, which trains as before (all layers trainable).

The encoder sees only the records the classifier is fitted on (never the held-out fold), so the
out-of-fold figures stay honest. Masked-span reconstruction as a pretext task for time series:
Zerveas et al. 2021, "A transformer-based framework for multivariate time series
representation learning", KDD: 2114-2124 (masking ratio 0.15, contiguous spans).

Keras is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any

import numpy as np

from experiments.ctg.settings import Variant
from stages.ctg.models import network as ctg_model
from stages.ctg.models.settings import TrainCtg

log = logging.getLogger(__name__)

# Channels of ``ctg_model.model_inputs``: normalised FHR, FHR present (1/0), scaled UC.
FHR, PRESENT, UC = 0, 1, 2
ENCODER_LAYER = re.compile(r"conv\d+|lstm")


def span_steps(span_s: float, fs_hz: float) -> int:
    """Input steps of one hidden span: ``round(span_s * fs_hz)``, at least 1."""
    return max(int(round(float(span_s) * float(fs_hz))), 1)


def pool_factor(net: TrainCtg) -> int:
    """Input steps per LSTM step: ``conv_pool ** conv_layers`` (1 without convolutions)."""
    return net.conv_pool**net.conv_layers


def span_mask(
    n_records: int, n_steps: int, mask_frac: float, span_len: int, rng: np.random.Generator
) -> np.ndarray:
    """Random non-overlapping spans to hide, the same count in every record.

    Each record gets ``n = max(round(mask_frac * n_steps / span_len), 1)`` spans of ``span_len``
    steps, placed uniformly at random among all non-overlapping placements (spans may touch),
    so exactly ``n * span_len`` steps of each record are hidden.

    Returns
    -------
    bool array, shape (n_records, n_steps)
        True where the input is hidden.
    """
    if not 0.0 < mask_frac < 1.0:
        raise ValueError(f"pretrain_mask_frac must be in (0, 1), got {mask_frac}")
    n_spans = max(int(round(mask_frac * n_steps / span_len)), 1)
    free = n_steps - n_spans * span_len
    if free < 0:
        raise ValueError(
            f"{n_spans} spans of {span_len} steps do not fit in {n_steps} steps; shorten "
            f"pretrain_span_s or lower pretrain_mask_frac"
        )
    mask = np.zeros((int(n_records), int(n_steps)), dtype=bool)
    for i in range(int(n_records)):
        # Choose the spans' ranks among the free + n_spans items (gap units and spans): the
        # k-th span then starts after (slot - k) gap units and k spans.
        slots = np.sort(rng.choice(free + n_spans, size=n_spans, replace=False))
        for start in slots + np.arange(n_spans) * (span_len - 1):
            mask[i, start : start + span_len] = True
    return mask


def mask_inputs(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``x`` (n, T, 3) with FHR and FHR-present set to 0 where ``mask``; UC kept."""
    out = np.array(x, dtype=np.float32, copy=True)
    hidden = np.asarray(mask, dtype=bool)
    out[..., FHR][hidden] = 0.0
    out[..., PRESENT][hidden] = 0.0
    return out


def pooled_targets(x: np.ndarray, mask: np.ndarray, pool: int) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruction targets and temporal weights at the LSTM's resolution.

    Parameters
    ----------
    x : array, shape (n, T, 3)
        The unmasked network input.
    mask : bool array, shape (n, T)
        Hidden steps (``span_mask``).
    pool : int
        Input steps per LSTM step (``pool_factor``); trailing steps that do not fill a pooled
        step are dropped, as the max-pool layers drop them.

    Returns
    -------
    (target, weight), shapes (n, T // pool, 1) and (n, T // pool)
        ``target``: the mean normalised FHR over the recorded samples of each pooled step (0 when
        none is recorded); ``weight``: the fraction of its ``pool`` input steps that are both
        hidden and recorded (0 = the step does not enter the loss).
    """
    n, t_in = x.shape[0], x.shape[1]
    n_out = t_in // int(pool)
    if n_out < 1:
        raise ValueError(f"{t_in} steps are fewer than the pool factor {pool}")
    cut = n_out * int(pool)
    fhr = np.asarray(x[:, :cut, FHR], dtype=np.float64).reshape(n, n_out, pool)
    present = np.asarray(x[:, :cut, PRESENT] > 0.5).reshape(n, n_out, pool)
    hidden = np.asarray(mask[:, :cut], dtype=bool).reshape(n, n_out, pool)
    count = present.sum(axis=-1)
    target = np.where(count > 0, (fhr * present).sum(axis=-1) / np.maximum(count, 1), 0.0)
    weight = (hidden & present).mean(axis=-1)
    return target[..., None].astype(np.float32), weight.astype(np.float32)


def encoder_model(seq_len: int, net: TrainCtg, name: str) -> Any:
    """``build_model``'s ``conv*`` blocks and ``lstm`` (output sequence) + a linear head.

    Built through :func:`stages.ctg.models.network.build_model` with ``lstm_readout: mean`` so the
    layer names and weight shapes are the classifier's whatever its readout (the LSTM's weights do
    not depend on ``return_sequences``). Output ``(n, T // pool, 1)``, uncompiled.
    """
    import keras

    full = ctg_model.build_model(
        int(seq_len), replace(net, lstm_readout="mean"), name=f"{name}_full"
    )
    recon = keras.layers.Dense(1, name="reconstruction")(full.get_layer("lstm").output)
    return keras.Model(full.inputs, recon, name=name)


def pretrain_encoder(
    x: np.ndarray, net: TrainCtg, variant: Variant, seed: int, fs_hz: float, name: str
) -> tuple[Any, list[float]]:
    """Pretrain an encoder on the records ``x`` (n, T, 3) by masked FHR reconstruction.

    Parameters
    ----------
    x : array, shape (n, T, 3)
        The records the classifier will be fitted on (never the held-out fold).
    net : TrainCtg
        The architecture, ``learning_rate`` and ``batch_size``.
    variant : Variant
        ``pretrain_epochs``, ``pretrain_mask_frac``, ``pretrain_span_s``.
    seed : int
        Seeds the spans (the network's weights and shuffling follow the Keras seed, set by the
        caller's ``seed_everything``).
    fs_hz : float
        Sampling rate of ``x`` (``preprocess_ctg.fs_out_hz``), to turn seconds into steps.
    name : str
        Model name (for the log).

    Returns
    -------
    (encoder, losses)
        The pretrained encoder and its loss per epoch (MSE on hidden recorded steps).
    """
    import keras

    if not fs_hz > 0:
        raise ValueError("pretraining needs the input sampling rate fs_hz (preprocess_ctg)")
    epochs = variant.pretrain_epochs
    span_len = span_steps(variant.pretrain_span_s, fs_hz)
    frac = variant.pretrain_mask_frac
    pool = pool_factor(net)
    rng = np.random.default_rng(seed)
    encoder = encoder_model(x.shape[1], net, name)
    encoder.compile(optimizer=keras.optimizers.Adam(net.learning_rate), loss="mse")
    losses: list[float] = []
    for epoch in range(epochs):
        mask = span_mask(len(x), x.shape[1], frac, span_len, rng)
        target, weight = pooled_targets(x, mask, pool)
        if not weight.sum() > 0:
            raise ValueError("no hidden step with a recorded FHR: nothing to reconstruct")
        # Keras averages weighted errors over all steps; scaling the weights to mean 1 makes the
        # loss the weighted mean over the hidden recorded steps.
        weight = weight * np.float32(weight.size / weight.sum())
        hist = encoder.fit(
            mask_inputs(x, mask),
            target,
            sample_weight=weight,
            batch_size=net.batch_size,
            epochs=1,
            shuffle=True,
            verbose=0,
        )
        losses.append(float(hist.history["loss"][-1]))
        log.info("%s pretraining epoch %d/%d: masked FHR MSE %.4f", name, epoch + 1, epochs,
                 losses[-1])  # fmt: skip
    return encoder, losses


def transfer_weights(source: Any, target: Any) -> list[str]:
    """Copy the ``conv*`` and ``lstm`` weights of ``source`` into ``target`` by layer name.

    Returns the names copied; raises ValueError when ``target`` has no such layer or
    ``source`` lacks one of them (a shape mismatch raises in ``set_weights``).
    """
    names = [layer.name for layer in target.layers if ENCODER_LAYER.fullmatch(layer.name)]
    if not names:
        raise ValueError(f"{target.name} has no conv*/lstm layer to receive weights")
    for layer_name in names:
        target.get_layer(layer_name).set_weights(source.get_layer(layer_name).get_weights())
    return names
