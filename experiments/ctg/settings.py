"""The settings of a CTG network variant: ``experiments/ctg_variants.yaml``, one section each.

The network itself (architecture, training) is ``train_ctg``'s in ``params.yaml``: a variant only
adds what the product does not have. Every key is required (no defaults in code).
"""

from __future__ import annotations

from stages.common.settings import settings


@settings
class Variant:
    """One variant of the CTG network.

    Attributes
    ----------
    description
        What it is, for the table.
    n_members
        Networks (seeds ``seed + 1000 j``) averaged per fold (1 = one network).
    crop_minutes
        > 0: train on random crops this long, redrawn each epoch (min; 0 = the whole window).
    tta_crops
        With crops: score = mean over this many evenly spaced crops.
    summary_skip
        Window means of the input channels beside the LSTM state.
    ph_loss_weight
        > 0: a second output regresses the standardised pH; loss = BCE + this x MSE.
    pretrain_epochs, pretrain_mask_frac, pretrain_span_s
        > 0 epochs: masked-FHR pretraining of the encoder; fraction of steps hidden, in spans of
        this many seconds.
    """

    description: str
    n_members: int
    crop_minutes: float
    tta_crops: int
    summary_skip: bool
    ph_loss_weight: float
    pretrain_epochs: int
    pretrain_mask_frac: float
    pretrain_span_s: float
