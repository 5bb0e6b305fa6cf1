"""The shared TensorFlow determinism switch: same seed, same weights; another seed, others."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stages.common.ml.determinism import deterministic_tensorflow, intra_op_threads

pytestmark = pytest.mark.unit


def _tiny_fit(seed: int) -> list[np.ndarray]:
    """A small Conv1D + dense network fitted for two epochs on seeded random data."""
    import keras

    deterministic_tensorflow(seed, intra_threads=2)
    rng = np.random.default_rng(0)  # the data stay fixed; only the seed of the fit varies
    x = rng.normal(size=(64, 32, 2)).astype("float32")
    y = (x[:, :, 0].mean(axis=1) > 0).astype("float32")
    model = keras.Sequential(
        [
            keras.Input((32, 2)),
            keras.layers.Conv1D(4, 5, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, epochs=2, batch_size=16, shuffle=True, verbose=0)
    return model.get_weights()


def test_same_seed_gives_identical_weights() -> None:
    first, again, other = _tiny_fit(7), _tiny_fit(7), _tiny_fit(8)
    assert len(first) == len(again)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, not within a tolerance
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_intra_op_threads_from_argument_environment_or_default(monkeypatch) -> None:
    monkeypatch.delenv("FETAL_TF_INTRA_THREADS", raising=False)
    assert intra_op_threads() == 2
    monkeypatch.setenv("FETAL_TF_INTRA_THREADS", "1")
    assert intra_op_threads() == 1 and intra_op_threads(3) == 3
    with pytest.raises(ValueError, match=">= 1"):
        intra_op_threads(0)


def test_the_same_keras_model_saves_to_the_same_bytes(tmp_path) -> None:
    """Keras stamps the save time into .keras files; canonical_keras_archive removes it."""
    import hashlib
    import time

    import keras
    import numpy as np

    from stages.common.io import canonical_keras_archive

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    digests = []
    for name in ("a.keras", "b.keras"):
        model.save(tmp_path / name)
        canonical_keras_archive(tmp_path / name)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        time.sleep(1.1)  # a later second: the raw Keras files would differ
    assert digests[0] == digests[1]
    again = keras.saving.load_model(tmp_path / "a.keras")
    x = np.ones((2, 4), dtype="float32")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def _shift_shared_ids(path, offset: int) -> str:
    """Rewrite a .keras file's ``shared_object_id`` values as another process would (other
    ``id()``s); the config text after the rewrite."""
    import re
    import zipfile

    with zipfile.ZipFile(path) as src:
        entries = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w") as out:
        for info, data in entries:
            if info.filename == "config.json":
                data = re.sub(
                    rb'"shared_object_id": (\d+)',
                    lambda m: b'"shared_object_id": %d' % (int(m.group(1)) + offset),
                    data,
                )
            out.writestr(info, data)
    with zipfile.ZipFile(path) as src:
        return src.read("config.json").decode()


def test_shared_object_ids_of_another_process_give_the_same_bytes(tmp_path) -> None:
    """Keras names objects shared between layers (the dtype policy of a pooling layer, as in
    the CTG network) by their Python id(): a memory address, new in every run. Saved in two
    processes, the same model differed in dvc.lock until canonical_keras_archive renumbered
    them; the renumbered file loads and predicts the same."""
    import hashlib

    import keras
    import numpy as np

    from stages.common.io import canonical_keras_archive

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 2)), keras.layers.Conv1D(3, 3, padding="same"),
         keras.layers.MaxPooling1D(2), keras.layers.MaxPooling1D(2)]
    )  # fmt: skip
    digests = []
    for offset in (0, 4096):
        path = tmp_path / f"m{offset}.keras"
        model.save(path)
        assert '"shared_object_id"' in _shift_shared_ids(path, offset)
        canonical_keras_archive(path)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    again = keras.saving.load_model(tmp_path / "m4096.keras")
    x = np.arange(32, dtype="float32").reshape(2, 8, 2)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_stages_turn_on_tensorflows_onednn_kernels_before_it_loads() -> None:
    """A stage's process runs TF with oneDNN (a 2x faster U-Net on CPUs without AVX-512)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    probe = (
        "import stages.ultrasound.head.unet_network\n"
        "from tensorflow.python.util import _pywrap_util_port as port\n"
        "print(port.IsMklEnabled())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "True"
