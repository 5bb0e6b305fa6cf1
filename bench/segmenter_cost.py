"""What the head segmenter's training costs, and why: ``python -m bench.segmenter_cost``.

Prints three markdown tables. Every time is process CPU time of ONE TensorFlow thread (the
stage's setting: each training process has one), so other load on the machine inflates it less
than wall time; the load average is printed with them. Synthetic 800 x 540 heads (a speckled
image with a bright elliptic ring), no data needed.

1. **Arithmetic against the core**, per network: convolution FLOPs of one training image-step
   counted from the Keras layers (:func:`bench.cost_model.training_flops_per_image_step`), the
   measured CPU ms of an image-step of the stage's own loop on ready arrays, the GFLOPS that
   makes, and what the core does for that arithmetic: ``tf.nn.conv2d`` forward at the network's
   own layer shapes and a 1024^3 matmul (its practical fp32 peak).
2. **Where an epoch goes**: the epoch's data (augmentation; the fine network's polar unwraps)
   against the network and the loop's data movement. The old design: SciPy augmentation and
   Keras ``Model.fit``. The new one: the stage's own
   :func:`~stages.ultrasound.head.unet_training.fit_job` (its per-epoch CPU log), so the figure
   is the repository's loop, not a copy of it.
3. **The stage** at 200 and 913 images, projected from those per-image-step costs: the old
   design (5 fold U-Nets on 4/5 of the images + a final one on all, 128 x 192, 80 epochs, batch 8,
   filters [8, 16, 32, 64]) and the new one (``train_segmenter_us``: per fold a coarse and a fine
   network on 4/5 of the images); wall time of the models on 2 single-thread workers, longest
   first (:func:`bench.cost_model.list_schedule_wall_s`). Training only: the per-job process
   start, the one-off resize of the images and the out-of-fold scoring are not in it.

The old design's network no longer exists in ``stages/``: it was the U-Net of
:func:`~stages.ultrasound.head.unet_network.build_unet` at 128 x 192 with the same filters and a
sigmoid output (compiled with its loss). The bench builds it with today's ``build_unet`` at
(128, 192): the convolutions, hence the arithmetic, are identical; the sigmoid is one
element-wise op per pixel, moved into the loss.

``--quick`` measures fewer images and repeats (a smoke run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench import cost_model as cm

OLD_HW = (128, 192)
OLD_FILTERS = (8, 16, 32, 64)
OLD_EPOCHS = 80.0
OLD_BATCH = 8
N_IMAGES = (200, 913)
WORKERS = 2
IMAGE_HW = (540, 800)


@dataclass(frozen=True)
class Plan:
    """One network's training schedule in a design: epochs, batch and whether an epoch's last
    incomplete batch is dropped (the stage's step budget) or trained (Keras ``fit``)."""

    name: str
    epochs: float
    batch_size: int
    drop_remainder: bool


@dataclass(frozen=True)
class Design:
    """A training design: its networks (one job each per fold), folds and final model."""

    label: str
    plans: tuple[Plan, ...]
    n_folds: int
    final_model: bool


def old_design() -> Design:
    return Design(
        "old: 5 folds + final U-Net 128x192, 80 epochs",
        (Plan("unet", OLD_EPOCHS, OLD_BATCH, False),), 5, True,
    )  # fmt: skip


def new_design(s: Any) -> Design:
    """The design of ``train_segmenter_us`` (a :class:`SegmenterSettings`)."""
    c, f = s.coarse, s.fine
    return Design(
        f"new: {s.n_folds} folds x (coarse {c.input_height}x{c.input_width} {c.epochs:g} ep"
        f" + fine {f.input_hw[0]}x{f.input_hw[1]} {f.epochs:g} ep)",
        (Plan("coarse", c.epochs, c.batch_size, True), Plan("fine", f.epochs, f.batch_size, True)),
        s.n_folds, False,
    )  # fmt: skip


def plan_image_steps(plan: Plan, n_train: int) -> int:
    """Image-steps of one network trained on ``n_train`` images under ``plan``."""
    if plan.drop_remainder:
        from stages.ultrasound.head.unet_training import steps_for

        return steps_for(n_train, plan.epochs, plan.batch_size) * plan.batch_size
    return int(round(plan.epochs * n_train))


def design_jobs(design: Design, n_images: int) -> list[tuple[str, int]]:
    """(network name, image-steps) of every model the design trains on ``n_images``."""
    sizes = cm.fold_train_sizes(n_images, design.n_folds)
    if design.final_model:
        sizes.append(n_images)
    return [(p.name, plan_image_steps(p, n)) for n in sizes for p in design.plans]


def stage_row(design: Design, n_images: int, ms_per_image_step: dict[str, float]) -> dict:
    """Image-steps, core seconds and wall seconds (2 workers, longest first) of a design."""
    jobs = design_jobs(design, n_images)
    core = sorted((cm.stage_core_s(k, ms_per_image_step[name]) for name, k in jobs), reverse=True)
    return {
        "models": design.n_folds + (1 if design.final_model else 0),
        "jobs": len(jobs),
        "image_steps": sum(k for _, k in jobs),
        "core_s": sum(core),
        "wall_s": cm.list_schedule_wall_s(core, WORKERS),
    }


# ----------------------------------------------------------------------------- measurements


def synthetic_heads(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` uint8 800 x 540 images (speckle + a bright elliptic skull ring) and their ellipses
    ``(cx, cy, a, b, angle_rad)`` in pixels."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images, ellipses = [], []
    for _ in range(n):
        cx, cy = rng.uniform(0.4, 0.6) * w, rng.uniform(0.4, 0.6) * h
        a = rng.uniform(0.15, 0.3) * w
        b, t = a * rng.uniform(0.7, 0.9), rng.uniform(0, np.pi)
        c, s = np.cos(t), np.sin(t)
        u, v = ((xx - cx) * c + (yy - cy) * s) / a, (-(xx - cx) * s + (yy - cy) * c) / b
        ring = np.abs(np.sqrt(u * u + v * v) - 1) < 0.04
        img = 0.3 * rng.random((h, w)) + 0.6 * ring
        images.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
        ellipses.append([cx, cy, a, b, t])
    return images, np.array(ellipses)


def arithmetic(model: Any, repeats: int) -> dict[str, float]:
    """Training FLOPs per image-step of ``model`` and the core's conv GFLOPS at its shapes."""
    layers = cm.conv_layers(model)
    return {
        "train_flops": float(cm.training_flops_per_image_step(layers)),
        "conv_gflops": cm.layer_conv_gflops(layers, repeats=repeats),
    }


def measure_old(images: list, ellipses: np.ndarray, s: Any, repeats: int) -> dict[str, float]:
    """The old design's U-Net: arithmetic, bare step, SciPy augmentation and Keras ``fit``."""
    import keras

    from stages.ultrasound.head.training_data import augment, coarse_arrays
    from stages.ultrasound.head.unet_network import bce_dice_loss, build_unet

    x, y = coarse_arrays(images, ellipses, OLD_HW)
    model = build_unet(OLD_HW, OLD_FILTERS, s.batch_norm, "old")
    loss = bce_dice_loss(s.coarse.dice_weight)
    out = arithmetic(model, repeats)
    out["network_ms"] = cm.network_step_ms(model, loss, x, y, OLD_BATCH, repeats)
    rng = np.random.default_rng(0)
    augment(x[:OLD_BATCH], y[:OLD_BATCH], rng, s.coarse.augment)
    aug_s = cm.cpu_s(lambda: augment(x, y, rng, s.coarse.augment), repeats) / repeats
    model.compile(keras.optimizers.Adam(1e-3), loss=loss)
    xa, ya = x[..., None], y[..., None]
    model.fit(xa, ya, batch_size=OLD_BATCH, epochs=1, verbose=0)
    fit = lambda: model.fit(xa, ya, batch_size=OLD_BATCH, epochs=1, verbose=0)  # noqa: E731
    fit_s = cm.cpu_s(fit, repeats) / repeats
    out["data_ms"] = aug_s / len(x) * 1000.0
    out["epoch_ms"] = (aug_s + fit_s) / len(x) * 1000.0
    return out


def measure_new(kind: str, images: list, ellipses: np.ndarray, s: Any, repeats: int) -> dict:
    """A new design network (``coarse`` | ``fine``) trained by the stage's own ``fit_job`` for
    ``repeats + 1`` epochs (the first, with graph tracing, not counted), then a bare step."""
    from stages.ultrasound.head import training_data as data
    from stages.ultrasound.head.unet_network import bce_dice_loss, ray_loss
    from stages.ultrasound.head.unet_training import ModelJob, fit_job

    net = getattr(s, kind)
    short = dataclasses.replace(s, **{kind: dataclasses.replace(net, epochs=float(repeats + 1))})
    model, log = fit_job(ModelJob(f"bench/{kind}", kind, images, ellipses, 0), short)
    per_epoch = (len(images) // net.batch_size) * net.batch_size  # image-steps of an epoch
    out = arithmetic(model, repeats)
    out["epoch_ms"] = float(np.mean(log["epoch_cpu_s"][1:])) / per_epoch * 1000.0
    out["data_ms"] = float(np.mean(log["epoch_augment_cpu_s"][1:])) / per_epoch * 1000.0
    if kind == "coarse":
        x, y = data.coarse_arrays(images, ellipses, net.input_hw)
        loss = bce_dice_loss(net.dice_weight)
    else:
        x, y = data.fine_epoch(images, ellipses, net, np.random.default_rng(0))
        loss = ray_loss(net.n_radii, net.wrap_px, net.sigma_rows, net.l1_weight)
    out["network_ms"] = cm.network_step_ms(model, loss, x, y, net.batch_size, repeats)
    return out


# ----------------------------------------------------------------------------- tables


def print_arithmetic(nets: dict[str, dict], peak_gflops: float) -> None:
    print(
        "| network | train MFLOP / image-step | network ms / image-step | achieved GFLOPS | "
        "core conv GFLOPS (its layer shapes, fwd) | core matmul GFLOPS | of conv | of matmul |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, m in nets.items():
        achieved = m["train_flops"] / (m["network_ms"] / 1e3) / 1e9
        print(f"| {name} | {m['train_flops'] / 1e6:.0f} | {m['network_ms']:.1f} | "
              f"{achieved:.1f} | {m['conv_gflops']:.1f} | {peak_gflops:.1f} | "
              f"{achieved / m['conv_gflops']:.0%} | {achieved / peak_gflops:.0%} |")  # fmt: skip


def print_epoch(nets: dict[str, dict]) -> None:
    print(
        "| network | loop | epoch data (augmentation / unwrap) ms | network ms | "
        "loop and data movement ms | epoch ms / image-step | data share |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, m in nets.items():
        loop = "Keras fit" if name.startswith("old") else "stage fit_job"
        rest = m["epoch_ms"] - m["data_ms"] - m["network_ms"]
        print(f"| {name} | {loop} | {m['data_ms']:.2f} | {m['network_ms']:.1f} | {rest:.2f} | "
              f"{m['epoch_ms']:.1f} | {m['data_ms'] / m['epoch_ms']:.0%} |")  # fmt: skip


def print_stage(designs: list[tuple[Design, dict[str, float]]]) -> None:
    print(
        f"| design | images | models (jobs) | image-steps | training core s | "
        f"wall min, {WORKERS} single-thread workers |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows = {}
    for design, ms in designs:
        for n in N_IMAGES:
            r = rows[design.label, n] = stage_row(design, n, ms)
            print(
                f"| {design.label} | {n} | {r['models']} ({r['jobs']}) | "
                f"{r['image_steps']:,} | {r['core_s']:,.0f} | {r['wall_s'] / 60:.1f} |"
            )
    (old, _), (new, _) = designs
    for n in N_IMAGES:
        a, b = rows[old.label, n], rows[new.label, n]
        print(f"\nat {n} images, old / new: image-steps {a['image_steps'] / b['image_steps']:.1f}x,"
              f" core s {a['core_s'] / b['core_s']:.1f}x, wall {a['wall_s'] / b['wall_s']:.1f}x",
              end="")  # fmt: skip
    print()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 images, 1 repeat (a smoke run)")
    args = ap.parse_args(argv)
    from stages.common.ml.determinism import deterministic_tensorflow
    from stages.common.settings import load_settings
    from stages.ultrasound.head.settings import SegmenterSettings

    s = load_settings(SegmenterSettings, "train_segmenter_us")
    deterministic_tensorflow(0, intra_threads=1)  # the stage's training processes: one thread
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the per-shape conv functions retrace on purpose
    n, repeats = (16, 1) if args.quick else (64, 2)
    load_start = os.getloadavg()
    images, ellipses = synthetic_heads(n)
    peak = cm.core_matmul_gflops(repeats=3 if args.quick else 10)
    c, f = s.coarse, s.fine
    nets = {
        f"old U-Net {OLD_HW[0]}x{OLD_HW[1]}": measure_old(images, ellipses, s, repeats),
        f"new coarse {c.input_height}x{c.input_width}": measure_new(
            "coarse", images, ellipses, s, repeats),
        f"new fine {f.input_hw[0]}x{f.input_hw[1]}": measure_new(
            "fine", images, ellipses, s, repeats),
    }  # fmt: skip
    load_end = os.getloadavg()
    print(f"{n} synthetic images, {repeats} repeat(s); process CPU time, one TensorFlow thread; "
          f"measured under load: load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at "
          f"end ({os.cpu_count()} cores)\n")  # fmt: skip
    print_arithmetic(nets, peak)
    print()
    print_epoch(nets)
    print()
    old, coarse, fine = (m["epoch_ms"] for m in nets.values())
    print_stage([(old_design(), {"unet": old}), (new_design(s), {"coarse": coarse, "fine": fine})])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
