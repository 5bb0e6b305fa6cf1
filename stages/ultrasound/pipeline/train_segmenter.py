"""Stage ``train_segmenter_us``: the coarse-to-fine head segmenter, trained on HC18.

Coarse: a small U-Net at 64 x 96 finds the head (the cranium as a soft mask of the target
ellipse). Fine: the same U-Net trunk reads the polar unwrap of the full-resolution enhanced
image around the coarse ellipse and says, per direction, where the skull's outline lies; an
ellipse is fitted to those points (:mod:`stages.ultrasound.head.coarse_to_fine`). Target: the
sonographer's ellipse scaled to the head circumference the sonographer reported.

Examinations (the ``NNN`` of ``NNN_HC`` / ``NNN_2HC``) are split into ``n_folds`` folds,
stratified by head size and seeded by ``fold_seed`` alone
(``data/processed/us/segmenter_folds.csv``: a retrain with another ``seed`` is scored on the same
folds, so the registry's paired comparison sees the fits, not a re-draw of the folds); each fold's
two networks train on the other folds, every network in its own process with one TensorFlow
thread, two at once on two cores, or on a Dask cluster
(:func:`~stages.ultrasound.head.unet_training.train_models`). Each fold's pair segments its own
held-out images (out-of-fold, OOF: ``oof.csv`` with the quality signals and flag); the
``final`` folder holds all fold pairs, the ensemble that ``segment_us`` uses on images no fold
saw and that ``register_us`` registers as ``us-head-segmenter``, promoted on minus the OOF mean
|HC error| (paired per image). Design, cost and learning curve: ``docs/experiments.md``.

Reference: Ronneberger O et al. U-Net, MICCAI 2015; data: van den Heuvel TLA et al. PLoS ONE
2018;13(8):e0200412 (HC18).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stages.common.io import write_csv, write_json, write_run_report
from stages.common.ml.determinism import deterministic_tensorflow
from stages.common.parallel import DaskSettings
from stages.common.params import load_params, project_root
from stages.common.registry import tracking
from stages.common.settings import load_settings
from stages.ultrasound.head.hc18_training import read_hc18, segmenter_folds, summary, train_all
from stages.ultrasound.head.settings import SegmenterSettings
from stages.ultrasound.paths import SEGMENTER_FOLDS, SEGMENTER_OOF_CSV, TRAIN_SEGMENTER_REPORT

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    s = load_settings(SegmenterSettings, "train_segmenter_us")
    dask = load_settings(DaskSettings, "dask")
    # this process only scores (each network trains in its own): fixed threads, op determinism
    deterministic_tensorflow(s.seed)
    enhance_us, root = load_params("enhance_us"), project_root()
    d = read_hc18(root)
    folds = segmenter_folds(d.names, d.hc_mm, s.n_folds, s.fold_seed)
    write_csv(root / SEGMENTER_FOLDS, folds)
    with tracking.run("us-head-segmenter", "train_segmenter_us", load_params("train_segmenter_us"),
                      stage="train_segmenter_us"):  # fmt: skip
        oof, logs = train_all(root, d, folds["fold"].to_numpy(), s, dask, enhance_us)
        report: dict[str, Any] = {**summary(oof), "n_images": len(d.names), "n_folds": s.n_folds}
        # CPU seconds are run facts (untracked data/runs/ and MLflow), not model facts
        cpu = {f"train_cpu_s/{k}": float(np.sum(v["epoch_cpu_s"])) for k, v in logs.items()}
        tracking.log_metrics({**report, **cpu})
    write_csv(root / SEGMENTER_OOF_CSV, oof)
    write_json(root / TRAIN_SEGMENTER_REPORT, report)
    write_run_report(root, "train_segmenter_us", {"train_cpu_s": cpu})
    log.info("OOF |HC error| %.2f mm (median %.2f), Dice %.3f; flagged %.1f %%, accepted %.2f mm",
             report["oof_hc_error_mm_mean"], report["oof_hc_error_mm_median"],
             report["oof_dice_mean"], 100 * report["oof_flag_rate"],
             report["oof_accepted_hc_error_mm_mean"])  # fmt: skip


if __name__ == "__main__":
    main()
