"""What a U-Net image-step costs, against what one core can do for that arithmetic.

The arithmetic of :mod:`bench.segmenter_cost` (pure Python once a Keras model is built):

* :func:`conv_layers` / :func:`conv_flops` count the multiply-adds of every convolution of a
  Keras model per image (FLOPs = 2 x multiply-adds; batch normalisation, activations, pooling,
  up-sampling and concatenation are memory-bound element-wise work, not counted);
* :func:`training_flops_per_image_step`: a training step costs the forward pass, the weight
  gradient (the same multiply-adds again) and the input gradient of every convolution but the
  first (its input is the image: nothing upstream needs it), i.e. ``3 F - F_first``;
* :func:`fold_train_sizes`, :func:`stage_image_steps`, :func:`stage_core_s`,
  :func:`list_schedule_wall_s`: a stage's image-steps, its core seconds at a measured cost per
  image-step and its wall time when its models run on a pool of single-thread workers.

Measurements (process CPU time of ONE TensorFlow thread, so that other processes' load inflates
them less than wall time): :func:`core_matmul_gflops` (the core's practical fp32 peak),
:func:`layer_conv_gflops` (``tf.nn.conv2d`` forward at a network's own layer shapes) and
:func:`network_step_ms` (the stage's compiled training loop on ready arrays).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ConvCost:
    """Forward arithmetic of one convolution layer per image."""

    name: str
    out_hw: tuple[int, int]
    kernel_hw: tuple[int, int]
    in_channels: int
    out_channels: int

    @property
    def macs(self) -> int:
        """Multiply-adds per image: output pixels x kernel area x in x out channels."""
        (h, w), (kh, kw) = self.out_hw, self.kernel_hw
        return h * w * kh * kw * self.in_channels * self.out_channels

    @property
    def flops(self) -> int:
        return 2 * self.macs


def conv_layers(model: Any) -> list[ConvCost]:
    """Every ``Conv2D`` of a functional Keras model, in graph order, with its per-image shape.

    Stride-1 convolutions with ``padding="same"`` (or 1 x 1) are expected, as in the project's
    U-Nets: the output size is read from the layer's output tensor.
    """
    out = []
    for layer in model.layers:
        if type(layer).__name__ != "Conv2D":
            continue
        _, h, w, c_out = (int(v) if v is not None else -1 for v in layer.output.shape)
        kh, kw, c_in, c_out_kernel = (int(v) for v in layer.kernel.shape)
        if c_out != c_out_kernel:
            raise ValueError(f"{layer.name}: output has {c_out} channels, kernel {c_out_kernel}")
        out.append(ConvCost(layer.name, (h, w), (kh, kw), c_in, c_out))
    return out


def conv_flops(layers: Sequence[ConvCost]) -> int:
    """Forward convolution FLOPs per image (2 x multiply-adds, no bias)."""
    return int(sum(c.flops for c in layers))


def training_flops_per_image_step(layers: Sequence[ConvCost]) -> int:
    """Convolution FLOPs of one training image-step: ``3 F - F_first`` (see the module doc)."""
    if not layers:
        return 0
    return int(3 * conv_flops(layers) - layers[0].flops)


def fold_train_sizes(n_images: int, n_folds: int) -> list[int]:
    """Training images of each fold model when ``n_images`` split into ``n_folds`` folds as
    equal as possible (the stage's folds are examination-disjoint: within an image of this)."""
    test = [n_images // n_folds + (1 if k < n_images % n_folds else 0) for k in range(n_folds)]
    return [n_images - t for t in test]


def stage_image_steps(n_images: int, n_folds: int, epochs: float, final_model: bool) -> float:
    """Image-steps of a stage that trains one model per fold on the other folds' images (and,
    with ``final_model``, one more on every image) for ``epochs`` full epochs each."""
    per_fold = n_images * (n_folds - 1) / n_folds
    return epochs * (n_folds * per_fold + (n_images if final_model else 0))


def stage_core_s(image_steps: float, ms_per_image_step: float) -> float:
    """Core seconds of ``image_steps`` at a measured cost per image-step (ms)."""
    return image_steps * ms_per_image_step / 1000.0


def list_schedule_wall_s(job_core_s: Sequence[float], parallel: int = 2) -> float:
    """Wall seconds of jobs started in the given order, each on the first free worker (what a
    pool of ``parallel`` single-thread workers does), one core per worker."""
    free = [0.0] * max(1, parallel)
    for job in job_core_s:
        k = int(np.argmin(free))
        free[k] += float(job)
    return max(free)


# ----------------------------------------------------------------------------- measurements


def cpu_s(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Process CPU seconds (user + sys, all threads) of ``repeats`` calls of ``fn``."""
    t = time.process_time()
    for _ in range(repeats):
        fn()
    return time.process_time() - t


def core_matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Measured ``tf.matmul`` GFLOPS of an n x n product: the core's practical fp32 peak."""
    import tensorflow as tf

    a = tf.random.uniform((n, n))
    f = tf.function(lambda: tf.matmul(a, a))
    f().numpy()
    s = cpu_s(lambda: f().numpy(), repeats)
    return repeats * 2 * n**3 / s / 1e9


def layer_conv_gflops(
    layers: Sequence[ConvCost], batch: int = 32, unroll: int = 8, repeats: int = 2
) -> float:
    """The core's forward conv throughput on a network's own layer shapes: total FLOPs over total
    measured CPU seconds (each distinct shape measured once, weighted by its count).

    ``unroll`` convolutions run inside one compiled call on a batch of ``batch``, so TensorFlow's
    per-call overhead does not count against the small shapes.
    """
    import tensorflow as tf

    total_flops, total_s = 0.0, 0.0
    seen: dict[tuple, float] = {}
    for c in layers:
        key = (c.out_hw, c.kernel_hw, c.in_channels, c.out_channels)
        if key not in seen:
            x = tf.random.uniform((batch, *c.out_hw, c.in_channels))
            ks = [tf.random.uniform((*c.kernel_hw, c.in_channels, c.out_channels))
                  for _ in range(unroll)]  # fmt: skip

            @tf.function
            def f(x: Any = x, ks: list = ks) -> Any:
                return tf.add_n([tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME")) for k in ks])

            f().numpy()
            seen[key] = cpu_s(lambda f=f: f().numpy(), repeats) / (repeats * unroll * batch)
        total_flops += c.flops
        total_s += seen[key]
    return total_flops / total_s / 1e9


def network_step_ms(
    model: Any, loss_fn: Callable, x: np.ndarray, y: np.ndarray, batch: int, repeats: int
) -> float:
    """CPU ms per image-step of the network alone: the stage's own compiled loop
    (:func:`stages.ultrasound.head.unet_training.fit`) on ready arrays ``x`` (N, H, W) and
    ``y``, no augmentation, for ``repeats + 1`` epochs; the first (graph tracing) not counted."""
    from stages.ultrasound.head.unet_training import fit

    per_epoch = len(x) // batch
    log = fit(model, loss_fn, lambda rng: (x, y), (repeats + 1) * per_epoch, batch, 1e-3, 0,
              0.0, "bench")  # fmt: skip
    cpu = np.subtract(log["epoch_cpu_s"], log["epoch_augment_cpu_s"])[1:]
    return float(np.mean(cpu)) / (per_epoch * batch) * 1000.0
