"""Promotion without MLflow: paired comparison on common items, the decision, the history.

A model version is evaluated item by item (:class:`Evaluation`): a CTG record's out-of-fold
probability, an HC18 image's out-of-fold |HC error|, a validation crop's plane probabilities.
Champion and challenger are compared on the items both were evaluated on (:func:`align`, an
inner join on the item id), none of which either model trained on, with the paired statistics
of :mod:`stages.common.ml.paired` (DeLong for an AUC of records, a paired bootstrap, by patient
clusters where there are patients, for any other metric) and its rule (:func:`paired.decide`).

:func:`decide` is the one decision rule. Every alias move is one entry of the champion's history
(:func:`history_entry`), stored as one registered-model tag per move (``champion_history.NNNN``,
compact JSON). The writer (:mod:`stages.common.registry.champion`, under the registry lock)
writes the entry first, then moves the alias, then tags the versions; :func:`reconcile` says what
to do with a last entry whose alias move never happened.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from stages.common.ml import metrics, paired

ITEM, CLUSTER, Y, PRED = "item", "cluster", "y", "pred"
HISTORY_PREFIX = "champion_history."


def _mean_neg(y: np.ndarray, pred: np.ndarray) -> float:
    return -float(np.mean(pred))


def _auc(y: np.ndarray, pred: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank sum (ties count half), NaN with one class: equal to
    scikit-learn's, ~100x faster, which the 1000 bootstrap resamples per interval need."""
    pos = np.asarray(y).astype(float) > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.asarray(pred, dtype=float))
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# Per-item scores a paired bootstrap can resample ("higher is better"): name -> score(y, pred).
SCORES: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": _auc,
    "accuracy": lambda y, p: float(np.mean(np.argmax(p, axis=1) == y)),
    "log_loss_neg": lambda y, p: -metrics.log_loss(y.astype(int), p),
    "mean_neg": _mean_neg,  # values that are losses per item (|HC error| mm): minus their mean
}


@dataclass(frozen=True)
class Evaluation:
    """A version's evaluation, item by item: what a paired comparison needs.

    ``items`` has ``item`` (id), ``y`` (label or truth), the prediction (``pred``, or ``pred.0``
    ... ``pred.k`` for class probabilities) and optionally ``cluster`` (patient). ``method`` is
    ``"delong"`` (binary ``y``, ``pred`` a probability) or ``"bootstrap"`` with ``score`` a key of
    :data:`SCORES`.
    """

    items: pd.DataFrame
    metric: str
    method: str = "bootstrap"
    score: str = "auc"
    n_bootstrap: int = 1000
    seed: int = 0

    def scoring(self) -> dict[str, Any]:
        """How the items are scored (stored with the version beside its items)."""
        return {"metric": self.metric, "method": self.method, "score": self.score,
                "n_bootstrap": self.n_bootstrap, "seed": self.seed}  # fmt: skip

    def items_csv(self) -> bytes:
        """The items as CSV bytes: what is stored, hashed and read back."""
        return self.items.to_csv(index=False).encode("utf-8")

    @classmethod
    def from_stored(cls, items: pd.DataFrame, scoring: Mapping[str, Any]) -> Evaluation:
        """An evaluation read back from a version's stored items and :meth:`scoring`."""
        return cls(items, str(scoring["metric"]), str(scoring["method"]), str(scoring["score"]),
                   int(scoring["n_bootstrap"]), int(scoring["seed"]))  # fmt: skip


def items_artifact(name: str, version: str) -> str:
    """Where a version's per-item evaluation lives in its run (versions may share a run)."""
    return f"evaluation/{name}/v{version}/items.csv"


def own_score(evaluation: Evaluation) -> float:
    """One version's figure on its own items: the AUC (DeLong evaluations) or the score."""
    y, pred = evaluation.items[Y].to_numpy(), predictions(evaluation.items)
    return SCORES["auc" if evaluation.method == "delong" else evaluation.score](y, pred)


def pred_columns(items: pd.DataFrame) -> list[str]:
    return [c for c in items.columns if c == PRED or c.startswith(PRED + ".")]


def predictions(items: pd.DataFrame) -> np.ndarray:
    """The prediction column as a vector, or the ``pred.i`` columns as a matrix."""
    cols = pred_columns(items)
    return items[cols[0]].to_numpy(float) if cols == [PRED] else items[cols].to_numpy(float)


def with_predictions(items: pd.DataFrame, pred: np.ndarray) -> pd.DataFrame:
    """``items`` with its predictions replaced by ``pred`` (a re-scored champion's)."""
    out = items.drop(columns=pred_columns(items))
    pred = np.asarray(pred, dtype=float)
    if pred.ndim == 1:
        return out.assign(**{PRED: pred})
    return out.assign(**{f"{PRED}.{i}": pred[:, i] for i in range(pred.shape[1])})


def align(challenger: pd.DataFrame, champion: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of both on their common items, in the challenger's order (labels: the
    challenger's, the current truth)."""
    ids = challenger[ITEM].astype(str)
    champ = champion.assign(**{ITEM: champion[ITEM].astype(str)}).drop_duplicates(ITEM)
    common = ids.isin(set(champ[ITEM]))
    chall = challenger[common.to_numpy()].assign(**{ITEM: ids[common]})
    champ = champ.set_index(ITEM).loc[chall[ITEM]].reset_index()
    return chall.reset_index(drop=True), champ


def compare(evaluation: Evaluation, champion_items: pd.DataFrame, margin: float) -> paired.Verdict:
    """Paired verdict of the challenger (``evaluation``) against the champion's items."""
    chall, champ = align(evaluation.items, champion_items)
    n = len(chall)
    if n == 0:
        return paired.decide(evaluation.metric, np.nan, np.nan, (np.nan, np.nan), margin, 0,
                             "none: no common items")  # fmt: skip
    y = chall[Y].to_numpy()
    a, b = predictions(champ), predictions(chall)
    if evaluation.method == "delong":
        try:
            d = paired.delong_test(y, a, b)
        except ValueError as exc:
            return paired.decide(evaluation.metric, np.nan, np.nan, (np.nan, np.nan), margin, n,
                                 f"DeLong impossible: {exc}")  # fmt: skip
        return paired.decide(
            evaluation.metric, d.auc_a, d.auc_b, (d.ci_low, d.ci_high), margin, n, "DeLong"
        )
    score = SCORES[evaluation.score]
    clusters = chall[CLUSTER].to_numpy() if CLUSTER in chall else None
    _, low, high = paired.paired_bootstrap(
        score, y, a, b, evaluation.n_bootstrap, evaluation.seed, clusters
    )
    unit = "patients" if clusters is not None else "items"
    method = f"paired bootstrap ({unit}, {evaluation.n_bootstrap})"
    return paired.decide(
        evaluation.metric, score(y, a), score(y, b), (low, high), margin, n, method
    )


def score_interval(evaluation: Evaluation, level: float = 0.95) -> tuple[float, float, float]:
    """``(value, low, high)`` of one version's score on its items: the paired bootstrap (same
    resampling, by cluster when there are clusters) against a null side whose score is 0."""
    items, score = evaluation.items, SCORES[evaluation.score]

    def vs_null(y: np.ndarray, pred: np.ndarray) -> float:
        return 0.0 if np.isnan(pred).all() else score(y, pred)

    pred = predictions(items)
    clusters = items[CLUSTER].to_numpy() if CLUSTER in items else None
    return paired.paired_bootstrap(
        vs_null, items[Y].to_numpy(), np.full_like(pred, np.nan), pred,
        evaluation.n_bootstrap, evaluation.seed, clusters, level,
    )  # fmt: skip


# --------------------------------------------------------------------------- decisions


@dataclass
class Decision:
    """What promotion decided, with the statistics behind it; published by stages and flows."""

    model: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    margin: float
    promoted: bool
    reason: str
    method: str = ""
    n: int = 0
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    challenger_data_version: str = ""
    champion_data_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Decision:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def interval(self) -> str:
        if self.ci_low is None or self.ci_low != self.ci_low:
            return ""
        return f"[{self.ci_low:+.4f}, {self.ci_high:+.4f}]"

    def to_markdown(self) -> str:
        champ = (
            "none"
            if self.champion_version is None
            else f"v{self.champion_version}: {_num(self.champion_value)}"
        )
        rows = [
            ("model", self.model),
            ("metric", self.metric),
            ("challenger", f"v{self.challenger_version}: {_num(self.challenger_value)}"),
            ("champion", champ),
            ("difference (paired)", f"{_num(self.difference)} {self.interval()}".strip()),
            ("method, n", f"{self.method or '-'}, n = {self.n}"),
            ("margin", f"{self.margin:.4f}"),
            ("data versions", f"{self.challenger_data_version} vs "
                              f"{self.champion_data_version or '-'}"),
            ("decision", "PROMOTED" if self.promoted else "kept champion"),
            ("reason", self.reason),
        ]  # fmt: skip
        return "| field | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def _num(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.4f}"


def decision_from_verdict(
    model: str,
    version: str,
    champion_version: str,
    verdict: paired.Verdict,
    data_versions: tuple[str, str],
) -> Decision:
    return Decision(
        model, version, champion_version, verdict.metric, verdict.challenger, verdict.champion,
        verdict.margin, verdict.promote, verdict.reason, verdict.method, verdict.n_records,
        verdict.difference, verdict.ci_low, verdict.ci_high, *data_versions,
    )  # fmt: skip


@dataclass(frozen=True)
class Candidate:
    """One side of a decision, as the registry holds it: the version, the data it was evaluated
    on, its stored per-item evaluation (None: none stored) and whether it loads through the
    verified path (False: registered before artifact digests, a pickled pyfunc)."""

    version: str
    data_version: str = ""
    evaluation: Evaluation | None = None
    verified: bool = True


def decide(
    model: str, challenger: Candidate, champion: Candidate | None, margin: float
) -> Decision:
    """The one decision rule: should ``challenger`` replace ``champion`` (None: there is none)?

    Paired on the items both were evaluated on (:func:`compare`: DeLong for a CTG AUC, a paired
    bootstrap by patient for the others) and promoted only beyond ``margin`` and noise. Without a
    pairing the champion stays, except that a champion which cannot be loaded safely (registered
    before artifact digests) gives way to any verified challenger: keeping it would leave no
    model to serve.
    """
    ev = challenger.evaluation
    metric = ev.metric if ev is not None else ""
    value = own_score(ev) if ev is not None and len(ev.items) else float("nan")
    champ_version = None if champion is None else champion.version

    def outcome(promoted: bool, reason: str) -> Decision:
        data = (challenger.data_version, champion.data_version if champion else "")
        return Decision(model, challenger.version, champ_version, metric, value, None, margin,
                        promoted, reason, challenger_data_version=data[0],
                        champion_data_version=data[1])  # fmt: skip

    if not challenger.verified:
        return outcome(False, f"v{challenger.version} has no artifact digests (registered "
                              "before verified loading): never promoted")  # fmt: skip
    if champion is None:
        return outcome(True, "no champion yet")
    if champion.version == challenger.version:
        return outcome(False, "challenger is already the champion")
    if not champion.verified:
        return outcome(
            True,
            f"champion v{champion.version} predates artifact digests (a pickled "
            "version load_model refuses): replaced without a paired comparison",
        )
    if ev is None:
        return outcome(
            False, "no per-item evaluation of the challenger: cannot pair, champion kept"
        )
    if champion.evaluation is None:
        return outcome(
            False, f"champion v{champion.version} has no stored per-item evaluation: kept"
        )
    verdict = compare(ev, champion.evaluation.items, margin)
    versions = (challenger.data_version, champion.data_version)
    return decision_from_verdict(model, challenger.version, champion.version, verdict, versions)


# --------------------------------------------------------------------------- history


def history_key(seq: int) -> str:
    return f"{HISTORY_PREFIX}{seq:04d}"


def history(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    """The history entries in a registered model's tags, oldest first."""
    keys = sorted(k for k in tags if k.startswith(HISTORY_PREFIX))
    return [{"seq": int(k[len(HISTORY_PREFIX) :]), **json.loads(tags[k])} for k in keys]


def history_entry(decision: Decision, who: Mapping[str, str], when_utc: str) -> dict[str, Any]:
    """One alias move, complete: who ran it, when, from and to, the figures and the reason."""
    return {
        "when": when_utc,
        "from": decision.champion_version,
        "to": decision.challenger_version,
        "metric": decision.metric,
        "champion_value": decision.champion_value,
        "challenger_value": decision.challenger_value,
        "difference": decision.difference,
        "ci": [decision.ci_low, decision.ci_high],
        "method": decision.method,
        "n": decision.n,
        "margin": decision.margin,
        "reason": decision.reason,
        "data_versions": [decision.challenger_data_version, decision.champion_data_version],
        **dict(who),
    }


def dumps(entry: Mapping[str, Any]) -> str:
    """Compact JSON (one tag value); NaN becomes null, at any depth (strict JSON)."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and v != v:
            return None
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v

    return json.dumps(clean(entry), separators=(",", ":"), sort_keys=True, default=str)


def reconcile(last: Mapping[str, Any] | None, champion: str | None, completed: bool) -> str:
    """What to do with the last history entry, given the current ``champion`` version and
    whether the move ``completed`` (its new champion carries the entry's ``promoted_at``).

    ``"ok"``: nothing to do (a completed move stays history even if the alias was moved by hand
    since). ``"retag"``: the alias moved, the version tags were not written. ``"complete"``: the
    writer died between the entry and the alias move (the alias still holds ``from``): move it.
    ``"rollback"``: the alias was moved elsewhere meanwhile: the entry never happened, drop it.
    """
    if last is None or completed:
        return "ok"
    if str(last["to"]) == str(champion):
        return "retag"
    frm = last.get("from")
    return "complete" if (None if frm is None else str(frm)) == champion else "rollback"


def history_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per move, newest first: the columns ``--history`` prints."""
    rows = [
        {
            "seq": e["seq"],
            "when_utc": e.get("when", ""),
            "from": "-" if e.get("from") is None else f"v{e['from']}",
            "to": f"v{e['to']}",
            "metric": e.get("metric", ""),
            "champion": _num(e.get("champion_value")),
            "challenger": _num(e.get("challenger_value")),
            "difference": _num(e.get("difference")),
            "interval": "" if None in (e.get("ci") or [None])
            else f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]",
            "method": e.get("method") or "",
            "n": e.get("n", ""),
            "by": " ".join(x for x in (e.get("stage"), e.get("user"),
                                       str(e.get("git_commit") or "")[:8],
                                       f"run {e['run_id'][:8]}" if e.get("run_id") else "") if x),
            "reason": e.get("reason", ""),
        }
        for e in reversed(entries)
    ]  # fmt: skip
    return pd.DataFrame(rows)
