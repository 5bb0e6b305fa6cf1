"""The one module that talks to MLflow: runs, artifacts, the model registry and promotion.

Defaults: a ``sqlite:///mlflow.db`` store in the project root with artifacts under
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` overrides (a tracking server, PostgreSQL, ...).
Nothing happens at import time: URIs are set when a function here is first called.

Promotion follows aliases: each new version gets ``challenger``; ``champion`` moves only when
the challenger beats the champion on the same items by the margin and beyond noise
(:mod:`stages.common.registry.promotion`), decided once, in the training stage. Every move is
an entry of the champion's history. Registration is idempotent (a version keys its inputs).
"""

from __future__ import annotations

import contextlib
import getpass
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from stages.common.params import project_root
from stages.common.registry import model_card, promotion
from stages.common.registry.provenance import (  # noqa: F401  (re-exported: tracking.data_hash, ...)
    data_hash,
    git_commit,
    lineage_tags,
    pinned_requirements,
    stage_input_hashes,
)

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the project's default sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def _mlflow():
    # Imported lazily: mlflow takes ~2 s to import and most callers (tests, CLI help) never need it.
    import mlflow

    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return mlflow


def client():
    """An ``MlflowClient`` on the configured tracking and registry URI."""
    mlflow = _mlflow()
    return mlflow.MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def _experiment_id(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if "MLFLOW_TRACKING_URI" not in os.environ:
        # Keep artifacts beside the default sqlite store, not in ./mlruns of whatever cwd.
        location = (project_root() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our lookup and create
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def run(
    experiment: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    stage: str | None = None,
) -> Iterator[Any]:
    """Start an MLflow run tagged with the git commit and the stage's dvc.lock input hashes."""
    mlflow = _mlflow()
    all_tags = {
        "git_commit": git_commit(),
        **(lineage_tags(stage) if stage else {}),
        **(tags or {}),
    }
    with mlflow.start_run(
        experiment_id=_experiment_id(experiment), run_name=run_name, tags=all_tags
    ) as active:
        if params:
            mlflow.log_params(_flatten(params))
        yield active


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    clean = {k: float(v) for k, v in metrics.items() if v is not None and v == v}
    _mlflow().log_metrics(clean, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    path = Path(path)
    if path.is_dir():
        _mlflow().log_artifacts(str(path), artifact_path=artifact_path)
    elif path.is_file():
        _mlflow().log_artifact(str(path), artifact_path=artifact_path)


def log_figure(fig: Any, name: str) -> None:
    _mlflow().log_figure(fig, name)


def set_tags(tags: Mapping[str, Any]) -> None:
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


# --------------------------------------------------------------------------- pyfunc models


try:  # the wrapper must subclass PythonModel, which needs mlflow; keep import failures readable
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a hard dependency
    _PythonModel = object  # type: ignore[assignment,misc]


class PredictorModel(_PythonModel):  # type: ignore[misc,valid-type]
    """A pyfunc model whose preprocessing and network come from a stage's own loader.

    ``loader`` is ``"package.module:function"``; the function takes the artifact paths and
    returns an object with ``predict(model_input) -> pandas.DataFrame``. The stage code ships
    with the model (``code_paths``), so the registered model takes raw inputs.
    """

    def __init__(self, loader: str) -> None:
        self.loader = loader
        self._predictor: Any = None

    def load_context(self, context: Any) -> None:
        module, func = self.loader.split(":")
        self._predictor = getattr(importlib.import_module(module), func)(dict(context.artifacts))

    # No type hints here on purpose: MLflow would try to derive a signature from them.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        return self._predictor.predict(model_input)


def log_predictor_model(
    name: str,
    loader: str,
    artifacts: Mapping[str, str | Path],
    pip_requirements: list[str] | None = None,
    input_example: Any = None,
    signature: Any = None,
) -> str:
    """Log a :class:`PredictorModel` in the active run; its model URI (``pip_requirements``
    default: :func:`pinned_requirements`)."""
    if pip_requirements is None:
        pip_requirements = pinned_requirements()
    mlflow = _mlflow()
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=PredictorModel(loader),
        artifacts={k: str(v) for k, v in artifacts.items()},
        # The stage package itself ships with the model, so it loads wherever mlflow runs.
        code_paths=[str(Path(__file__).resolve().parents[1])],
        pip_requirements=pip_requirements,
        input_example=input_example,
        signature=signature,
    )
    return info.model_uri


def load_model(uri: str) -> Any:
    """A pyfunc model (``models:/NAME@champion``, ``runs:/...``, a path); no dependency check:
    versions are pinned to this environment (and its warnings would precede scoring output)."""
    return _mlflow().pyfunc.load_model(uri, suppress_warnings=True)


def load_predictor(uri: str) -> Any:
    """The project's own predictor inside a registered pyfunc (``_predictor`` of the wrapper
    :func:`log_predictor_model` logs), to score arrays without DataFrames."""
    return load_model(uri).unwrap_python_model()._predictor


def model_signature(spec: Mapping[str, Any]) -> Any:
    """An MLflow ``ModelSignature`` from ``{"inputs": [(name, type, required)], "outputs": ...}``;
    types are ``DataType`` names or ``array<T>`` (``array<array<long>>``: a 2-D image)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    def dtype(text: str) -> Any:
        if text.startswith("array<") and text.endswith(">"):
            return Array(dtype(text[6:-1]))
        return getattr(DataType, text)

    def schema(cols: Any) -> Any:
        return Schema([ColSpec(dtype(t), n, required=bool(r)) for n, t, r in cols])

    return ModelSignature(inputs=schema(spec["inputs"]), outputs=schema(spec["outputs"]))


# --------------------------------------------------------------------------- registry


def register_model(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any],
    idempotency_key: str,
) -> str:
    """Register ``model_uri`` as a version of ``name`` with ``tags``; alias it ``challenger``.

    A version with the same ``idempotency_key`` (a rerun after a crash) is reused, not added.
    """
    c = client()
    try:
        c.create_registered_model(name)
    except Exception as exc:  # already exists (RESOURCE_ALREADY_EXISTS) or raced with another run
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    for mv in c.search_model_versions(f"name='{name}'"):
        if mv.tags.get("idempotency_key") == idempotency_key:
            log.info("%s v%s already registered for key %s", name, mv.version, idempotency_key)
            c.set_registered_model_alias(name, CHALLENGER, mv.version)
            return str(mv.version)
    all_tags = {k: str(v) for k, v in tags.items()}
    all_tags["idempotency_key"] = idempotency_key
    all_tags.setdefault("git_commit", git_commit())
    mv = _mlflow().register_model(model_uri, name, tags=all_tags)
    # Two runs registering the same inputs at once both pass the lookup above; the lowest
    # version with the key wins and the loser deletes its own, so the key stays unique.
    same_key = sorted(
        (m for m in c.search_model_versions(f"name='{name}'")
         if m.tags.get("idempotency_key") == idempotency_key),
        key=lambda m: int(m.version),
    )  # fmt: skip
    if same_key and str(same_key[0].version) != str(mv.version):
        log.info(
            "%s v%s duplicates v%s (concurrent run): removed", name, mv.version, same_key[0].version
        )
        c.delete_model_version(name, str(mv.version))
        mv = same_key[0]
    c.set_registered_model_alias(name, CHALLENGER, mv.version)
    return str(mv.version)


def alias_version(name: str, alias: str) -> str | None:
    """The version of ``name`` holding ``alias``, or None (no such model or alias)."""
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except Exception:  # RESOURCE_DOES_NOT_EXIST for the model or the alias
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` of ``name`` at ``version``."""
    client().set_registered_model_alias(name, alias, str(version))


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def record_evaluation(name: str, version: str, evaluation: promotion.Evaluation) -> None:
    """Store a version's per-item evaluation in its run (:func:`promotion.items_artifact`):
    the champion's side of every later paired comparison."""
    run_id = client().get_model_version(name, version).run_id
    where = Path(promotion.items_artifact(name, version))
    with tempfile.TemporaryDirectory() as tmp:
        evaluation.items.to_csv(Path(tmp) / where.name, index=False)
        client().log_artifact(run_id, str(Path(tmp) / where.name), str(where.parent))


IDS = {promotion.ITEM: str, "record": str}  # ids stay text ("001" is not 1)


def version_items(
    name: str, version: str, evaluation: promotion.Evaluation | None = None
) -> pd.DataFrame | None:
    """The per-item evaluation a version's run stored, else its ``evaluation.legacy_artifact``
    converted (versions registered before items were stored), else None."""
    run_id = client().get_model_version(name, version).run_id
    legacy = [evaluation.legacy_artifact] if evaluation and evaluation.legacy_artifact else []
    with tempfile.TemporaryDirectory() as tmp:
        for i, where in enumerate([promotion.items_artifact(name, version), *legacy]):
            with contextlib.suppress(Exception):  # no such artifact: try the next
                frame = pd.read_csv(client().download_artifacts(run_id, where, tmp), dtype=IDS)
                return evaluation.legacy_items(frame) if i else frame  # type: ignore[union-attr]
    return None


def decide(
    name: str,
    version: str,
    metric: str,
    margin: float,
    *,
    evaluation: promotion.Evaluation | None,
    rescore: Callable[[Any], Any] | None,
) -> promotion.Decision:
    """Whether ``version`` should become champion (read-only). Paired on the challenger's items:
    the champion's stored items (common ones), or ``rescore(champion predictor) -> predictions``
    on exactly the challenger's items. Without a pairing, the champion stays."""
    c = client()
    challenger = c.get_model_version(name, version)
    data = challenger.tags.get("data_version", "")
    value = float(challenger.tags.get(metric, "nan"))
    try:
        champ = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion alias yet
        champ = None

    def keep(reason: str) -> promotion.Decision:
        return promotion.Decision(
            name, version, str(champ.version), metric, value, None, margin, False, reason,
            challenger_data_version=data, champion_data_version=champ.tags.get("data_version", ""),
        )  # fmt: skip

    if champ is None:
        return promotion.Decision(
            name, version, None, metric, value, None, margin, True, "no champion yet",
            challenger_data_version=data,
        )  # fmt: skip
    if str(champ.version) == str(version):
        return keep("challenger is already the champion")
    if evaluation is None:
        return keep("no per-item evaluation of the challenger: cannot pair, champion kept")
    if rescore is not None:
        try:
            pred = rescore(load_predictor(f"models:/{name}/{champ.version}"))
            champ_items = promotion.with_predictions(evaluation.items, pred)
        except Exception as exc:  # a registry glitch or a scorer bug must not move the alias
            return keep(
                f"champion v{champ.version} could not be re-scored on this evaluation data "
                f"({type(exc).__name__}: {exc}): champion kept"
            )
    else:
        champ_items = version_items(name, str(champ.version), evaluation)
        if champ_items is None:
            return keep(f"champion v{champ.version} has no stored per-item evaluation: kept")
    verdict = promotion.compare(evaluation, champ_items, margin)
    versions = (data, champ.tags.get("data_version", ""))
    return promotion.decision_from_verdict(name, version, str(champ.version), verdict, versions)


def _who() -> dict[str, str]:
    run = _mlflow().active_run()
    stage, run_id = (run.data.tags.get("dvc_stage", ""), run.info.run_id) if run else ("", "")
    return {"stage": stage, "run_id": run_id, "git_commit": git_commit(), "user": getpass.getuser()}


def _complete_move(name: str, entry: Mapping[str, Any], move: bool = True) -> None:
    """Move ``champion`` as ``entry`` says (unless ``move`` is False) and tag both versions."""
    c = client()
    if move:
        set_alias(name, CHAMPION, str(entry["to"]))
    c.set_model_version_tag(name, str(entry["to"]), "promoted_at", entry["when"])
    c.set_model_version_tag(name, str(entry["to"]), "promotion_reason", entry["reason"])
    if entry.get("from") is not None:
        c.set_model_version_tag(name, str(entry["from"]), "replaced_at", entry["when"])
        c.set_model_version_tag(name, str(entry["from"]), "replaced_by", str(entry["to"]))


def champion_history(name: str) -> list[dict[str, Any]]:
    """Every alias move of ``name``'s champion, oldest first (registered-model tags)."""
    return promotion.history(client().get_registered_model(name).tags or {})


def reconcile_history(name: str) -> str:
    """Finish or undo a move a killed run left half done (entry written, alias not moved).

    Returns the action taken (:func:`promotion.reconcile`).
    """
    try:
        entries = champion_history(name)
    except Exception:  # no such registered model yet
        return "ok"
    last = entries[-1] if entries else None
    done = last is not None and last["when"] == client().get_model_version(
        name, str(last["to"])
    ).tags.get("promoted_at")
    action = promotion.reconcile(last, alias_version(name, CHAMPION), done)
    if action == "rollback":
        client().delete_registered_model_tag(name, promotion.history_key(last["seq"]))
        client().set_model_version_tag(name, str(last["to"]), "promotion_decision", "rolled back")
    elif action != "ok":  # finish the move, or tag after a kill between alias move and tags
        _complete_move(name, last, move=action == "complete")
    if action != "ok":
        log.warning("%s: unfinished champion move %s: %s", name, last, action)
    return action


def promote_if_better(
    name: str,
    version: str,
    metric: str,
    margin: float,
    evaluation: promotion.Evaluation | None = None,
    rescore: Callable[[Any], Any] | None = None,
) -> promotion.Decision:
    """Decide (:func:`decide`), tag the verdict on the version; on promotion write the history
    entry, then move ``champion``, then tag the versions. A kill between entry and alias move is
    finished (or undone) by the next call for the model (:func:`reconcile_history`)."""
    c = client()
    reconcile_history(name)
    if evaluation is not None:
        record_evaluation(name, version, evaluation)
    decision = decide(name, version, metric, margin, evaluation=evaluation, rescore=rescore)
    verdict = "promoted" if decision.promoted else "rejected"
    c.set_model_version_tag(name, version, "promotion_decision", verdict)
    c.set_model_version_tag(name, version, "promotion_reason", decision.reason)
    c.set_model_version_tag(name, version, "promotion_verdict", promotion.dumps(decision.to_dict()))
    if decision.promoted:
        when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        entry = promotion.history_entry(decision, _who(), when)
        seq = max([e["seq"] for e in champion_history(name)] + [0]) + 1
        c.set_registered_model_tag(name, promotion.history_key(seq), promotion.dumps(entry))
        _complete_move(name, entry)
    return decision


def register_and_promote(
    model_dir: Path,
    loader: str,
    registered_name: str,
    tags: Mapping[str, Any],
    idempotency_key: str,
    promote_metric: str,
    promote_margin: float,
    evaluation: promotion.Evaluation,
    card_facts: Mapping[str, Any],
    rescore: Callable[[Any], Any] | None = None,
    input_example: Any = None,
    signature: Mapping[str, Any] | None = None,
) -> promotion.Decision:
    """Log ``model_dir`` as a pyfunc (with ``signature``, a :func:`model_signature` spec) in the
    active run with its model card, register it (idempotent), describe the version with the card
    and promote it if the paired comparison says so (:func:`promote_if_better`)."""
    uri = log_predictor_model(
        name="model",
        loader=loader,
        artifacts={"model_dir": str(model_dir)},
        input_example=input_example,
        signature=model_signature(signature) if signature else None,
    )
    card = model_card.model_card(card_facts)
    _mlflow().log_text(card, "model_card.md")
    version = register_model(uri, registered_name, tags, idempotency_key=idempotency_key)
    client().update_model_version(registered_name, version, description=card)
    decision = promote_if_better(
        registered_name, version, promote_metric, float(promote_margin), evaluation, rescore
    )
    set_tags({"registered_version": version, "promoted": decision.promoted})
    log.info("registry decision:\n%s", decision.to_markdown())
    return decision


def compare_versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name`` with its tags, run params/metrics and aliases, newest first."""
    c = client()
    aliases: dict[str, list[str]] = {}
    for alias, ver in (c.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(ver), []).append(alias)
    rows = []
    for mv in sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: -int(m.version)):
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            "run_id": mv.run_id or "",
            **dict(mv.tags),
        }
        with contextlib.suppress(Exception):  # a run in a store we cannot reach: tags still tell
            r = c.get_run(mv.run_id)
            row.update({f"metric.{k}": v for k, v in r.data.metrics.items()})
            row.update({f"param.{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    return rows
