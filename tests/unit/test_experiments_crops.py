"""The crops variant of the CTG network and its averaged model: known answers on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def test_crop_offsets_end_at_the_window_end_and_span_it():
    from experiments.ctg.crops import crop_offsets

    assert crop_offsets(3600, 1800, 1).tolist() == [1800]  # one crop: the most recent minutes
    assert crop_offsets(3600, 1800, 3).tolist() == [0, 900, 1800]
    assert crop_offsets(100, 99, 5).tolist() == [0, 1]  # duplicates dropped
    with pytest.raises(ValueError, match="longer than the window"):
        crop_offsets(100, 101, 2)


def test_random_crops_are_windows_of_the_input():
    from experiments.ctg.crops import random_crops

    x = np.arange(2 * 50 * 3, dtype=float).reshape(2, 50, 3)
    crops = random_crops(x, 20, np.random.default_rng(0))
    assert crops.shape == (2, 20, 3)
    for i in range(2):
        start = int(np.flatnonzero(x[i, :, 0] == crops[i, 0, 0])[0])
        np.testing.assert_array_equal(crops[i], x[i, start : start + 20])


def test_averaged_model_is_the_mean_of_members_over_crops():
    from experiments.ctg.crops import crop_offsets, crop_steps
    from experiments.ctg.variant_training import averaged_model
    from stages.ctg.models import network as M
    from tests.unit.test_experiments_variants import tiny_params

    params = tiny_params(conv_pool=2, learning_rate=0.001)
    seq_len, crop_len = 40, 24
    members = [M.build_model(crop_len, params, name=f"m{j}") for j in range(2)]
    offsets = crop_offsets(seq_len, crop_len, 3)
    avg = averaged_model(members, seq_len, crop_len, offsets)
    x = np.random.default_rng(1).normal(size=(5, seq_len, 3)).astype(np.float32)
    manual = np.mean(
        [M.predict_proba(m, x[:, o : o + crop_len]) for m in members for o in offsets], axis=0
    )
    np.testing.assert_allclose(M.predict_proba(avg, x), manual, atol=1e-6)
    assert averaged_model(members[:1], seq_len, 0, offsets) is members[0]  # nothing to average
    assert crop_steps(0.4, 1.0, seq_len) == crop_len and crop_steps(1.0, 1.0, seq_len) == 0
