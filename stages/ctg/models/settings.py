"""The typed ``params.yaml`` sections of the CTG model stages: ``train_ctg`` (the network) and
``train_families_ctg`` (the feature families). The serving limits and the sampling rate are the
shared ``ctg_signal`` section's (:mod:`stages.ctg.signal.settings`)."""

from __future__ import annotations

from stages.common.settings import settings


@settings
class TrainCtg:
    """``train_ctg``: the Conv1D + LSTM network and how it is trained.

    Attributes
    ----------
    seed
        Seeds the weights, the shuffling and the inner validation split.
    fhr_centre_bpm, fhr_scale_bpm, uc_scale
        Input normalisation: ``(fhr_bpm - centre) / scale``, ``uc / uc_scale``.
    window_minutes
        The network sees the last this many minutes (at most ``preprocess_ctg.last_minutes``).
    conv_layers, conv_filters, conv_kernel, conv_pool
        Conv1D + max-pool blocks before the LSTM (0 layers = the plain LSTM), filters per block,
        kernel length (samples), pool factor per block.
    units, lstm_readout
        LSTM units; ``last`` (final state) or ``mean`` (mean over the steps).
    dense_units, dropout
        Units of the first dense layer; dropout fraction before each dense layer.
    learning_rate, epochs, batch_size, patience, monitor, val_fraction
        Adam's rate; maximum epochs; records per batch; early stopping's patience (epochs) and
        quantity (``val_loss`` | ``val_auc``) on an inner validation split of this fraction.
    """

    seed: int
    fhr_centre_bpm: float
    fhr_scale_bpm: float
    uc_scale: float
    window_minutes: float
    conv_layers: int
    conv_filters: int
    conv_kernel: int
    conv_pool: int
    units: int
    lstm_readout: str
    dense_units: int
    dropout: float
    learning_rate: float
    epochs: int
    batch_size: int
    patience: int
    monitor: str
    val_fraction: float


@settings
class Gbm:
    """``train_families_ctg.gbm``: scikit-learn's histogram gradient boosting."""

    max_iter: int
    learning_rate: float
    max_leaf_nodes: int
    min_samples_leaf: int
    l2_regularization: float


@settings
class TrainFamiliesCtg:
    """``train_families_ctg``: the feature families beside the network.

    Attributes
    ----------
    seed
        Seeds the fits (the trees' tie-breaking; the logistic fits are exact).
    logistic_c
        Inverse L2 strength of the FIGO-feature logistic regression (the baseline).
    hybrid_c
        Inverse L2 strength of the hybrid's stacker (network logit + features).
    gbm
        The trees (:class:`Gbm`).
    """

    seed: int
    logistic_c: float
    hybrid_c: float
    gbm: Gbm
