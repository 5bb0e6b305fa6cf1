"""Known answers of the segmenter cost bench's arithmetic (``bench.cost_model``,
``bench.segmenter_cost``): no timed assertions."""

from __future__ import annotations

import pytest

from bench.cost_model import (
    ConvCost,
    conv_flops,
    fold_train_sizes,
    list_schedule_wall_s,
    stage_core_s,
    stage_image_steps,
    training_flops_per_image_step,
)

pytestmark = pytest.mark.unit


def test_one_conv_layer_by_hand():
    # 3x3 conv, 1 -> 8 channels on 8 x 8: 8*8 outputs x 9 taps x 1 x 8 = 4608 MACs
    c = ConvCost("c", (8, 8), (3, 3), 1, 8)
    assert c.macs == 4608 and c.flops == 9216
    # one layer on the image: forward + weight gradient, no input gradient
    assert training_flops_per_image_step([c]) == 2 * 9216
    assert training_flops_per_image_step([]) == 0


def test_two_layers_second_gets_its_input_gradient():
    a = ConvCost("a", (8, 8), (3, 3), 1, 8)
    b = ConvCost("b", (8, 8), (3, 3), 8, 8)  # 8*8*9*8*8 = 36864 MACs
    assert conv_flops([a, b]) == 2 * (4608 + 36864)
    assert training_flops_per_image_step([a, b]) == 2 * (2 * 4608) + 3 * (2 * 36864)


def test_keras_unet_counted_from_its_layers():
    pytest.importorskip("keras")
    from bench.cost_model import conv_layers
    from stages.ultrasound.head.unet_network import build_unet

    layers = conv_layers(build_unet((16, 24), (4, 8), True, "t"))
    # level 0: 1->4, 4->4 at 16x24; bottleneck 4->8, 8->8 at 8x12; decoder 12->4, 4->4; 1x1 4->1
    want = (16 * 24 * 9 * (1 * 4 + 4 * 4) + 8 * 12 * 9 * (4 * 8 + 8 * 8)
            + 16 * 24 * (9 * (12 * 4 + 4 * 4) + 4))  # fmt: skip
    assert sum(c.macs for c in layers) == want
    assert layers[0].in_channels == 1 and layers[-1].kernel_hw == (1, 1)


def test_old_design_arithmetic_is_the_known_one():
    # the old U-Net (128x192, [8, 16, 32, 64]): 1495 MFLOP per training image-step (lab's count)
    pytest.importorskip("keras")
    from bench.cost_model import conv_layers
    from stages.ultrasound.head.unet_network import build_unet

    layers = conv_layers(build_unet((128, 192), (8, 16, 32, 64), True, "old"))
    assert round(training_flops_per_image_step(layers) / 1e6) == 1495


def test_fold_sizes_and_stage_projection():
    assert fold_train_sizes(200, 5) == [160] * 5
    # 913 = 183 + 183 + 183 + 182 + 182
    assert fold_train_sizes(913, 5) == [730, 730, 730, 731, 731]
    # old stage: 5 folds on 4/5 of 200 images + a final one on all 200, 80 epochs
    steps = stage_image_steps(200, 5, 80, final_model=True)
    assert steps == 80 * (5 * 160 + 200) == 80_000
    assert stage_core_s(steps, 32.0) == pytest.approx(2560.0)


def test_design_jobs_old_and_new():
    from bench.segmenter_cost import Design, Plan, design_jobs, old_design, stage_row

    old = design_jobs(old_design(), 913)
    assert len(old) == 6 and sum(k for _, k in old) == 365_200
    new = Design("n", (Plan("coarse", 12, 8, True), Plan("fine", 20, 8, True)), 5, False)
    jobs = design_jobs(new, 913)
    # 730 or 731 images: 91 full batches of 8 per epoch (the remainder dropped)
    assert len(jobs) == 10 and sum(k for _, k in jobs) == 5 * (12 + 20) * 91 * 8
    assert sum(k for _, k in design_jobs(new, 200)) == 25_600
    row = stage_row(new, 200, {"coarse": 10.0, "fine": 5.0})
    # coarse 1920 image-steps x 10 ms = 19.2 s, fine 3200 x 5 ms = 16 s; five of each
    assert row["core_s"] == pytest.approx(5 * (19.2 + 16.0))
    assert row["wall_s"] == pytest.approx(3 * 19.2 + 2 * 16.0)  # longest first, 2 workers


def test_list_schedule():
    # 5 equal models on 2 workers: 3 rounds
    assert list_schedule_wall_s([10.0] * 5, 2) == 30.0
    # 10 jobs longest first: 5 of 12 and 5 of 8 on 2 workers
    assert list_schedule_wall_s([12.0] * 5 + [8.0] * 5, 2) == 52.0
    assert list_schedule_wall_s([7.0, 3.0, 3.0, 1.0], 2) == 7.0
    assert list_schedule_wall_s([4.0, 4.0], 1) == 8.0
