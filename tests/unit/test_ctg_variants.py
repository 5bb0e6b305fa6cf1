"""The CTG network's variants (train_ctg.ph_loss_weight): the pH head's standardisation and
loss, with known answers on tiny arrays; one short fit with the variant on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stages.ctg import multitask

pytestmark = pytest.mark.unit

N, T = 16, 32


def tiny_params(**changes: Any) -> dict[str, Any]:
    params = {
        "conv_layers": 1, "conv_filters": 4, "conv_kernel": 3, "conv_pool": 4, "units": 4,
        "dense_units": 4, "dropout": 0.0, "learning_rate": 0.01, "lstm_readout": "mean",
        "val_fraction": 0.25, "patience": 1, "epochs": 1, "batch_size": 4, "monitor": "val_auc",
        "ph_loss_weight": 0.0,
    }  # fmt: skip
    return {**params, **changes}


def tiny_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network inputs (N, T, 3) with FHR gaps, labels 1:3 and a pH lower for label 1."""
    rng = np.random.default_rng(seed)
    present = (rng.random((N, T)) > 0.1).astype(np.float32)
    fhr = rng.normal(size=(N, T)).astype(np.float32) * present
    uc = rng.random((N, T)).astype(np.float32)
    y = (np.arange(N) % 4 == 0).astype(int)
    ph = np.where(y == 1, 7.05, 7.25) + rng.normal(0, 0.03, N)
    return np.stack([fhr, present, uc], axis=-1), y, ph


# --------------------------------------------------------------------------- pH head


def test_ph_is_standardised_with_the_training_records_only() -> None:
    ph = np.array([7.0, 7.2, 7.4])
    z = multitask.standardised_ph(ph, np.array([0, 1]), crop_len=0)  # mean 7.1, SD 0.1
    np.testing.assert_allclose(z, [-1.0, 1.0, 3.0], atol=1e-5)


def test_ph_head_loss_is_weighted_bce_plus_weighted_mse() -> None:
    from stages.ctg.model import build_model

    x, y, ph = tiny_data()
    net = build_model(T, tiny_params())
    trainer = multitask.with_ph_head(net, 0.5, 0.01)
    assert trainer.output_names == ["distress", "ph"]
    z = multitask.standardised_ph(ph, np.arange(N), 0)
    w = np.where(y == 1, 3.0, 1.0).astype(np.float32)
    p, z_hat = (np.asarray(o, dtype=np.float64).ravel() for o in trainer(x, training=False))
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    want = np.mean(w * bce) + 0.5 * np.mean((z - z_hat) ** 2)  # class weights: BCE term only
    got = trainer.evaluate(
        x, [y, z], sample_weight=[w, np.ones_like(w)], batch_size=N, verbose=0, return_dict=True
    )
    assert got["loss"] == pytest.approx(want, rel=1e-4)
    assert "distress_auc" in got and multitask.metric_key("val_auc") == "val_distress_auc"


def test_ph_variant_fits_one_output_model_that_round_trips(tmp_path: Path) -> None:
    import keras

    from stages.ctg import train
    from stages.ctg.model import predict_proba

    x, y, ph = tiny_data()
    params = tiny_params(ph_loss_weight=0.5)
    net, curves, epoch_s = train.fit_network(x, y, params, 0, ph=ph)
    assert len(net.outputs) == 1 and net.output_shape == (None, 1)
    assert curves["val_auc"].notna().all()  # monitor val_auc found the classifier's AUC
    assert len(epoch_s) == len(curves)
    prob = predict_proba(net, x)
    assert prob.shape == (N,)
    net.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False)
    assert "ph" not in [layer.name for layer in loaded.layers]
    np.testing.assert_allclose(predict_proba(loaded, x), prob, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "crop_len", "ph_change", "match"),
    [
        ({"ph_loss_weight": 0.5}, 32, None, "crop_minutes"),
        ({"ph_loss_weight": 0.5}, 0, "nan", "missing"),
        ({"ph_loss_weight": 0.5}, 0, "none", "needs the pH"),
    ],
)
def test_unsupported_combinations_raise_before_training(
    changes: dict, crop_len: int, ph_change: str | None, match: str
) -> None:
    from stages.ctg import train

    x, y, ph = tiny_data()
    if ph_change == "nan":
        ph[5] = np.nan
    ph_arg = None if ph_change == "none" else ph
    with pytest.raises(ValueError, match=match):
        train.fit_network(x, y, tiny_params(**changes), 0, crop_len, ph=ph_arg)
