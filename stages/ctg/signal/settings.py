"""The typed settings of the raw CTG signal and its preprocessing (``params.yaml`` sections).

``ctg_signal`` is shared: the sampling rate of the raw records and the input lengths a served
``ctg-distress`` model takes are stated once there and read by every stage that needs them
(each lists the keys it reads in ``dvc.yaml``). ``preprocess_ctg`` is the cleaning, cropping and
resampling that both the ``preprocess_ctg`` stage and every served model apply. A model folder
saves both sections, so serving reads them back with the same classes.
"""

from __future__ import annotations

from stages.common.settings import settings


@settings
class CtgSignal:
    """``ctg_signal``: the raw FHR/UC records and the input a served model takes.

    Attributes
    ----------
    fs_hz
        Sampling rate of the raw FHR and UC (Hz; CTU-UHB: 4).
    min_input_minutes, max_input_minutes
        Shortest and longest record a served model scores (min).
    """

    fs_hz: float
    min_input_minutes: float
    max_input_minutes: float


@settings
class PreprocessCtg:
    """``preprocess_ctg``: raw record -> cleaned, cropped, resampled sequence and its label.

    Attributes
    ----------
    fs_out_hz
        Rate the network sees (Hz).
    resample_method
        A key of :data:`stages.ctg.signal.resampling.RESAMPLERS`.
    max_jump_bpm, min_run_s, fhr_min_bpm, fhr_max_bpm, max_gap_s, gap_fill
        The cleaning (:class:`stages.ctg.signal.cleaning.CleaningParams`).
    max_missing_frac
        Polyphase: an output sample whose input window is more missing than this is NaN.
    last_minutes
        Minutes kept before delivery (min).
    ph_threshold
        Acidemia label: umbilical-artery pH below this.
    """

    fs_out_hz: float
    resample_method: str
    max_jump_bpm: float
    min_run_s: float
    fhr_min_bpm: float
    fhr_max_bpm: float
    max_gap_s: float
    gap_fill: str
    max_missing_frac: float
    last_minutes: float
    ph_threshold: float
