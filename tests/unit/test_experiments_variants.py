"""The CTG network's research variants (experiments/ctg: the pH head, masked-FHR pretraining):
the masking, the pooled targets, the weight transfer and the pH head's loss, with known answers
on tiny arrays; one short fit with both variants on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from experiments.ctg import multitask, pretrain
from experiments.ctg.settings import Variant
from stages.common.settings import parse_settings
from stages.ctg.models.settings import TrainCtg

pytestmark = pytest.mark.unit

N, T = 16, 32


def tiny_params(**changes: Any) -> TrainCtg:
    params = {
        "seed": 0, "fhr_centre_bpm": 140, "fhr_scale_bpm": 25, "uc_scale": 100,
        "window_minutes": 1, "conv_layers": 1, "conv_filters": 4, "conv_kernel": 3,
        "conv_pool": 4, "units": 4, "dense_units": 4, "dropout": 0.0, "learning_rate": 0.01,
        "lstm_readout": "mean", "val_fraction": 0.25, "patience": 1, "epochs": 1,
        "batch_size": 4, "monitor": "val_auc",
    }  # fmt: skip
    return parse_settings(TrainCtg, {**params, **changes}, "train_ctg")


def tiny_variant(**changes: Any) -> Variant:
    values = {
        "description": "test", "n_members": 1, "crop_minutes": 0, "tta_crops": 1,
        "summary_skip": False, "ph_loss_weight": 0.0, "pretrain_epochs": 0,
        "pretrain_mask_frac": 0.15, "pretrain_span_s": 4,
    }  # fmt: skip
    return parse_settings(Variant, {**values, **changes}, "variant")


def tiny_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network inputs (N, T, 3) with FHR gaps, labels 1:3 and a pH lower for label 1."""
    rng = np.random.default_rng(seed)
    present = (rng.random((N, T)) > 0.1).astype(np.float32)
    fhr = rng.normal(size=(N, T)).astype(np.float32) * present
    uc = rng.random((N, T)).astype(np.float32)
    y = (np.arange(N) % 4 == 0).astype(int)
    ph = np.where(y == 1, 7.05, 7.25) + rng.normal(0, 0.03, N)
    return np.stack([fhr, present, uc], axis=-1), y, ph


def runs(row: np.ndarray) -> list[int]:
    """Lengths of the runs of True in a boolean row."""
    edges = np.diff(np.concatenate([[0], row.astype(int), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


# --------------------------------------------------------------------------- pretraining


def test_span_mask_hides_the_fraction_in_whole_spans_given_a_seed() -> None:
    mask = pretrain.span_mask(5, 100, 0.2, 5, np.random.default_rng(7))
    assert mask.shape == (5, 100)
    assert mask.sum(axis=1).tolist() == [20] * 5  # round(0.2 * 100 / 5) = 4 spans of 5 steps
    for row in mask:
        assert all(r % 5 == 0 for r in runs(row))  # touching spans merge into multiples of 5
    again = pretrain.span_mask(5, 100, 0.2, 5, np.random.default_rng(7))
    np.testing.assert_array_equal(mask, again)
    other = pretrain.span_mask(5, 100, 0.2, 5, np.random.default_rng(8))
    assert not np.array_equal(mask, other)
    assert pretrain.span_steps(60, 1.0) == 60 and pretrain.span_steps(0.1, 1.0) == 1
    with pytest.raises(ValueError, match="do not fit"):
        pretrain.span_mask(1, 10, 0.95, 6, np.random.default_rng(0))  # 2 spans of 6 > 10
    with pytest.raises(ValueError, match="pretrain_mask_frac"):
        pretrain.span_mask(1, 10, 1.0, 1, np.random.default_rng(0))


def test_mask_inputs_zeroes_fhr_and_mask_in_the_spans_and_keeps_uc() -> None:
    x, _, _ = tiny_data()
    mask = pretrain.span_mask(N, T, 0.25, 4, np.random.default_rng(1))
    out = pretrain.mask_inputs(x, mask)
    assert np.all(out[..., 0][mask] == 0) and np.all(out[..., 1][mask] == 0)
    np.testing.assert_array_equal(out[..., :2][~mask], x[..., :2][~mask])
    np.testing.assert_array_equal(out[..., 2], x[..., 2])  # UC untouched, spans included
    assert np.any(x[..., 1][mask] == 1)  # the input itself is not modified


def test_pooled_targets_equal_a_hand_computation() -> None:
    fhr = np.array([1, 2, 0, 4, 5, 6, 7, 8, 9], dtype=np.float32)  # step 2 missing
    present = np.array([1, 1, 0, 1, 1, 1, 1, 1, 1], dtype=np.float32)
    x = np.stack([fhr, present, np.zeros(9, np.float32)], axis=-1)[None]
    mask = np.array([[0, 0, 1, 1, 0, 0, 0, 0, 1]], dtype=bool)
    target, weight = pretrain.pooled_targets(x, mask, 4)  # 9 // 4 = 2 pooled steps
    np.testing.assert_allclose(target[0, :, 0], [(1 + 2 + 4) / 3, (5 + 6 + 7 + 8) / 4])
    # step 2 is hidden but missing: only step 3 counts; step 8 lies past the last pooled step
    np.testing.assert_allclose(weight[0], [1 / 4, 0.0])


def test_pretrained_encoder_weights_are_copied_into_the_classifier(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from stages.common.ml.training import seed_everything
    from stages.ctg.models.network import build_model

    x, _, _ = tiny_data()
    params = tiny_params(lstm_readout="last")  # a 'last' classifier too
    seed_everything(3)
    with caplog.at_level("INFO", logger="experiments.ctg.pretrain"):
        encoder, losses = pretrain.pretrain_encoder(
            x, params, tiny_variant(pretrain_epochs=1), 3, 1.0, "enc"
        )
    assert len(losses) == 1 and np.isfinite(losses[0]) and "masked FHR MSE" in caplog.text
    assert encoder.output_shape == (None, T // 4, 1)
    net = build_model(T, params)
    dense_before = [w.copy() for w in net.get_layer("dense").get_weights()]
    lstm_kernel = encoder.get_layer("lstm").get_weights()[0]
    assert not np.allclose(net.get_layer("lstm").get_weights()[0], lstm_kernel)
    assert pretrain.transfer_weights(encoder, net) == ["conv0", "lstm"]
    for name in ("conv0", "lstm"):
        for got, want in zip(
            net.get_layer(name).get_weights(), encoder.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(net.get_layer("dense").get_weights(), dense_before, strict=True):
        np.testing.assert_array_equal(got, want)  # the rest stays freshly initialised


# --------------------------------------------------------------------------- pH head


def test_ph_is_standardised_with_the_training_records_only() -> None:
    ph = np.array([7.0, 7.2, 7.4])
    z = multitask.standardised_ph(ph, np.array([0, 1]), crop_len=0)  # mean 7.1, SD 0.1
    np.testing.assert_allclose(z, [-1.0, 1.0, 3.0], atol=1e-5)


def test_ph_head_loss_is_weighted_bce_plus_weighted_mse() -> None:
    from stages.ctg.models.network import build_model

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


def test_both_variants_fit_one_output_model_that_round_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras

    from experiments.ctg.variant_training import fit_member
    from stages.ctg.models.network import predict_proba

    x, y, ph = tiny_data()
    seen: dict[str, Any] = {}

    def untrained_encoder(
        x_fit: np.ndarray, net: Any, variant: Any, seed: int, fs_hz: Any, name: str
    ) -> Any:
        # pretraining itself is tested above; here: what the fit gives it and copies back
        seen["x"], seen["encoder"] = x_fit, pretrain.encoder_model(x_fit.shape[1], net, name)
        return seen["encoder"], [0.0]

    monkeypatch.setattr(pretrain, "pretrain_encoder", untrained_encoder)
    variant = tiny_variant(ph_loss_weight=0.5, pretrain_epochs=1)
    net, curves, epoch_s = fit_member(x, y, 0, tiny_params(), variant, ph, 1.0, "m")
    np.testing.assert_array_equal(seen["x"], x)  # all of the fit's records, no labels
    assert not np.array_equal(  # fine-tuned from the copied weights, not frozen
        net.get_layer("lstm").get_weights()[0], seen["encoder"].get_layer("lstm").get_weights()[0]
    )
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
    ("changes", "ph_change", "fs_hz", "match"),
    [
        ({"ph_loss_weight": 0.5, "crop_minutes": 0.5}, None, 1.0, "crop_minutes"),
        ({"ph_loss_weight": 0.5}, "nan", 1.0, "missing"),
        ({"ph_loss_weight": 0.5}, "none", 1.0, "needs the pH"),
        ({"pretrain_epochs": 1}, None, 0.0, "fs_hz"),
    ],
)
def test_unsupported_combinations_raise_before_training(
    changes: dict, ph_change: str | None, fs_hz: float, match: str
) -> None:
    from experiments.ctg.variant_training import fit_member

    x, y, ph = tiny_data()
    if ph_change == "nan":
        ph[5] = np.nan
    ph_arg = None if ph_change == "none" else ph
    with pytest.raises(ValueError, match=match):
        fit_member(x, y, 0, tiny_params(), tiny_variant(**changes), ph_arg, fs_hz, "m")
