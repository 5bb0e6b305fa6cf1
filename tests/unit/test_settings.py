"""Typed settings: unknown, missing and mistyped keys are errors that name the key."""

from __future__ import annotations

import dataclasses

import pytest

from stages.common.settings import SettingsError, load_settings, parse_settings, settings

pytestmark = pytest.mark.unit


@settings
class Augment:
    rotation_deg: float
    flip: float


@settings
class Train:
    seed: int
    filters: tuple[int, ...]
    augment: Augment


GOOD = {"seed": 3, "filters": [8, 16], "augment": {"rotation_deg": 15, "flip": 0.5}}


def test_a_good_section_loads_typed_and_frozen() -> None:
    s = parse_settings(Train, GOOD, "train_x")
    assert s.seed == 3 and s.filters == (8, 16) and s.augment.rotation_deg == 15.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({**GOOD, "sed": 1}, "sed"),  # unknown key (a typo)
        ({k: v for k, v in GOOD.items() if k != "seed"}, "seed"),  # missing key
        ({**GOOD, "seed": "forty-two"}, "seed"),  # wrong type
        ({**GOOD, "augment": {"rotation_deg": 15}}, "augment.flip"),  # missing nested key
        ({**GOOD, "augment": {**GOOD["augment"], "shear": 1}}, "augment.shear"),  # unknown nested
    ],
)
def test_a_bad_section_is_an_error_naming_the_key(values: dict, named: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse_settings(Train, values, "train_x")
    assert "train_x" in str(err.value) and named in str(err.value)


def test_load_settings_reads_the_section_from_a_params_file(tmp_path) -> None:
    (tmp_path / "params.yaml").write_text(
        "train_x:\n  seed: 1\n  filters: [4]\n  augment: {rotation_deg: 0, flip: 0}\n"
    )
    assert load_settings(Train, "train_x", tmp_path / "params.yaml").filters == (4,)
