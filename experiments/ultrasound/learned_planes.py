"""The plane classifier with a CNN learned from scratch instead of the fixed Gabor bank.

``python -m experiments.ultrasound.learned_planes`` (after ``dvc repro split_planes_us``) trains
blocks of 3x3 convolution, optional batch normalisation, ReLU and 2x2 max pooling, then global
average pooling, dropout and a softmax layer, on the pipeline's train brain crops
(``data/processed/us/crops.npz``), with the augmentation layers inside the network (training
only), balanced class weights and, optionally, early stopping on the val loss; it prints the
val and test accuracy and macro-F1 (test: FETAL_PLANES_DB's ``Train == 0`` patients).

Until the layout change this was ``train_plane_classifier_us.frontend: learned``. On the mirror's
~110 training crops it stayed below always answering trans-thalamic (0.48 on the test split at
e72860e, classical crops) where the Gabor read-out reaches ~0.7: the stage no longer carries it.
With the full database (~11x the training images) it is the model to measure again. What the
first version taught (its settings below are the measured run's): batch normalisation with
batches of 16 made inference swing between epochs (val accuracy 0.16-0.52, often one plane for
every image), strong augmentation kept the network from fitting even the training images in
~200 steps, and early stopping on a 25-image validation loss kept epoch 1.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from stages.common.ml import metrics
from stages.common.ml.training import seed_everything
from stages.common.settings import load_settings
from stages.ultrasound.crops import PLANES, CropSettings, brain_split_crops, to_unit_float
from stages.ultrasound.paths import CROPS_NPZ, PLANES_MANIFEST_CSV
from stages.ultrasound.planes.classifier import (
    AugmentSettings,
    PlaneClassifierSettings,
    plane_scores,
    predict_planes,
)
from stages.ultrasound.planes.training import augmentation, fit_planes

ROOT = Path(__file__).resolve().parents[2]
# The augmentation of the measured run (the stage's is gentler: its read-out sees fixed features)
LEARNED_AUGMENT = {
    "shift": 0.05,
    "rotation_deg": 5,
    "zoom": 0.05,
    "flip": "horizontal_and_vertical",
}


def build_learned_classifier(
    input_size: int,
    filters: list[int],
    dropout: float,
    augment: AugmentSettings,
    batch_norm: bool,
    standardize: bool,
    s: PlaneClassifierSettings,
) -> Any:
    """The from-scratch CNN (module doc); ``standardize``: each image to zero mean and unit
    variance inside the network, after augmentation. Learning rate, label smoothing and the
    seed come from the stage's settings ``s``."""
    import keras
    from keras import layers

    image = keras.Input((input_size, input_size, 1), name="image")
    x = image
    for layer in augmentation(augment, s.seed):
        x = layer(x)
    if standardize:
        # Per-image standardisation as a built-in (serialisable) layer: no scale, no shift.
        x = layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False)(x)
    for f in filters:
        x = layers.Conv2D(f, 3, padding="same", use_bias=not batch_norm)(x)
        if batch_norm:
            x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout, seed=s.seed)(x)
    out = layers.Dense(len(PLANES), activation="softmax", name="plane")(x)
    model = keras.Model(image, out, name="us_plane_classifier_learned")
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=s.label_smoothing)
    model.compile(optimizer=keras.optimizers.Adam(s.learning_rate), loss=loss, metrics=["accuracy"])
    return model


def fit(model: Any, data: dict, args: argparse.Namespace) -> dict[str, list[float]]:
    """Train on ``data["train"]``; early stopping on the val loss when asked (the best epoch's
    weights are kept). Returns the Keras history."""
    import keras

    (x, y), (x_val, y_val) = data["train"], data["val"]
    n = len(PLANES)
    validation = (x_val, keras.utils.to_categorical(y_val, n)) if len(x_val) else None
    callbacks = []
    if validation is not None and args.early_stopping:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=args.patience,
                restore_best_weights=True,
                start_from_epoch=args.patience,
            )
        )
    return fit_planes(model, x, y, validation, args.epochs, args.batch_size, callbacks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=ROOT, help="project root with data/")
    ap.add_argument("--filters", type=int, nargs="+", default=[16, 32, 64, 64])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--batch-norm", action="store_true", help="after each convolution")
    ap.add_argument("--standardize", action="store_true", help="each image, in the network")
    ap.add_argument("--early-stopping", action="store_true", help="on the val loss")
    ap.add_argument("--patience", type=int, default=15, help="epochs (with --early-stopping)")
    ap.add_argument("--tta", default="all", help="test-time mirrors: none | horizontal | all")
    args = ap.parse_args(argv)
    params = args.project / "params.yaml"
    s = load_settings(PlaneClassifierSettings, "train_plane_classifier_us", params)
    crop_px = load_settings(CropSettings, "us_crops", params).crop_px
    splits = ("train", "val", "test")
    crops = brain_split_crops(args.project / PLANES_MANIFEST_CSV, args.project / CROPS_NPZ, splits)
    data = {
        k: (to_unit_float(c, crop_px), rows["brain_plane"].map(PLANES.index).to_numpy(dtype=int))
        for k, (rows, c) in crops.items()
    }
    seed_everything(s.seed)
    augment = replace(s.augment, **LEARNED_AUGMENT)
    model = build_learned_classifier(
        crop_px, args.filters, args.dropout, augment, args.batch_norm, args.standardize, s
    )
    history = fit(model, data, args)
    print(f"{len(history['loss'])} epochs on {len(data['train'][1])} train crops\n")
    print("| split | n | accuracy | macro-F1 | log-loss |\n|---|---:|---:|---:|---:|")
    for split in ("val", "test"):
        x, y = data[split]
        prob = predict_planes(model, x, args.tta)
        f1 = metrics.multiclass_metrics(y, prob.argmax(axis=1), len(PLANES))["macro_f1"]
        sc = plane_scores(prob, y)
        acc, loss = sc["val_accuracy"], -sc["val_log_loss_neg"]
        print(f"| {split} | {len(y)} | {acc:.3f} | {f1:.3f} | {loss:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
