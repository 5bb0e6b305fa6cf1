"""The one module that talks to MLflow: runs, artifacts, the model registry and promotion.

Defaults: a ``sqlite:///mlflow.db`` store in the project root with artifacts under
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` overrides (a tracking server, PostgreSQL, ...).
Nothing happens at import time: URIs are set when a function here is first called.

Promotion follows aliases, never the deprecated registry stages: each new version gets
``challenger``; ``champion`` moves only when the challenger beats the champion's metric by the
margin in ``params.yaml``. Registration is idempotent: a version carries the key of the inputs
that made it, so a stage killed after registering and run again reuses that version instead of
adding a duplicate.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from stages.common.params import project_root
from stages.common.provenance import (  # noqa: F401  (re-exported: tracking.data_hash, ...)
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
    """Log a :class:`PredictorModel` in the active run and return its model URI.

    ``pip_requirements`` defaults to :func:`pinned_requirements`.
    """
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
    """Load a pyfunc model (``models:/ctg-distress@champion``, ``runs:/...``, a path)."""
    return _mlflow().pyfunc.load_model(uri)


def load_predictor(uri: str) -> Any:
    """The project's own predictor inside a registered pyfunc (``_predictor`` of the wrapper
    :func:`log_predictor_model` logs), to score arrays without DataFrames."""
    return load_model(uri).unwrap_python_model()._predictor


# --------------------------------------------------------------------------- registry


@dataclass
class Decision:
    """What promotion decided and why; published by stages and flows as a table."""

    model: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    margin: float
    promoted: bool
    reason: str
    same_data: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        rows = [
            ("model", self.model),
            ("metric", self.metric),
            ("challenger", f"v{self.challenger_version}: {self.challenger_value:.4f}"),
            (
                "champion",
                "none"
                if self.champion_version is None
                else f"v{self.champion_version}: {self.champion_value:.4f}",
            ),
            ("margin", f"{self.margin:.4f}"),
            ("same evaluation data", str(self.same_data)),
            ("decision", "PROMOTED" if self.promoted else "kept champion"),
            ("reason", self.reason),
        ]
        return "| field | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)


def register_model(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any],
    idempotency_key: str,
) -> str:
    """Register ``model_uri`` as a new version of ``name`` tagged with its metrics; return it.

    When a version with the same ``idempotency_key`` already exists (a rerun after a crash
    between registering and finishing), that version is returned and nothing new is added.
    The ``challenger`` alias is set on the returned version.
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


def decide_promotion(
    name: str,
    version: str,
    metric: str,
    margin: float,
    higher_is_better: bool = True,
    require_same_data: bool = False,
    rescore: Callable[[str], float] | None = None,
) -> Decision:
    """Whether ``version`` should become champion (read-only: no alias moves).

    ``require_same_data``: a challenger evaluated on other data than the champion
    (``eval_data_hash`` tags differ) is not comparable, so it is not promoted.
    ``rescore``: when the data differ (or the champion lacks ``metric``),
    ``rescore(champion model URI)`` computes the champion's ``metric`` on the challenger's
    evaluation data, and that value is compared instead of the champion's tag (the stage knows
    how to score any version of its model; a tag measured on other data is not a fair
    opponent). If re-scoring fails or gives NaN, the champion is kept and the reason says why.
    """
    c = client()
    challenger = c.get_model_version(name, version)
    value = float(challenger.tags[metric])
    try:
        champ = c.get_model_version_by_alias(name, CHAMPION)
    except Exception:  # no champion alias yet
        champ = None
    if champ is None:
        return Decision(name, version, None, metric, value, None, margin, True, "no champion yet")
    champ_value = float(champ.tags.get(metric, "nan"))

    def verdict(promoted: bool, reason: str, same: bool) -> Decision:
        # champ_value is read when called: after a re-score it is the re-scored figure
        return Decision(
            name,
            version,
            str(champ.version),
            metric,
            value,
            champ_value,
            margin,
            promoted,
            reason,
            same,
        )

    if str(champ.version) == str(version):
        return verdict(False, "challenger is already the champion", True)
    same = challenger.tags.get("eval_data_hash") == champ.tags.get("eval_data_hash")
    rescored = ""
    # Re-score when the champion's figure was measured on other data, or is missing (a new
    # promotion metric): a NaN champion value would otherwise promote anything.
    if rescore is not None and (not same or champ_value != champ_value):
        try:
            rescored_value, why = float(rescore(f"models:/{name}/{champ.version}")), ""
        except Exception as exc:  # a registry glitch or a scorer bug must not move the alias
            rescored_value, why = float("nan"), f"{type(exc).__name__}: {exc}"
        if rescored_value != rescored_value:
            return verdict(
                False,
                f"champion v{champ.version} could not be re-scored on this evaluation data "
                f"({why or 'NaN'}): champion kept",
                False,
            )
        champ_value, same = rescored_value, True
        rescored = f"champion v{champ.version} re-scored on this evaluation data: "
    gain = value - champ_value if higher_is_better else champ_value - value
    if require_same_data and not same:
        return verdict(
            False,
            f"evaluated on other data (eval_data_hash {challenger.tags.get('eval_data_hash')} vs "
            f"{champ.tags.get('eval_data_hash')}): not comparable, champion kept",
            same,
        )
    better = champ_value != champ_value or gain > margin
    if better:
        return verdict(True, f"{rescored}{metric} better by {gain:+.4f} > margin {margin}", same)
    return verdict(
        False, f"{rescored}{metric} better by {gain:+.4f}, not more than margin {margin}", same
    )


def promote_if_better(
    name: str,
    version: str,
    metric: str,
    margin: float,
    higher_is_better: bool = True,
    rescore: Callable[[str], float] | None = None,
) -> Decision:
    """Move ``champion`` to ``version`` only if it beats the champion's ``metric`` by ``margin``.

    Metrics are read from the versions' tags (set at registration); with ``rescore`` a champion
    evaluated on other data is scored again on the challenger's (:func:`decide_promotion`).
    With no champion yet, the first version becomes champion.
    """
    decision = decide_promotion(name, version, metric, margin, higher_is_better, rescore=rescore)
    if decision.promoted:
        set_alias(name, CHAMPION, version)
    return decision


def compare_versions(name: str) -> list[dict[str, Any]]:
    """Every version of ``name`` with its tags, run params/metrics and aliases, newest first."""
    c = client()
    rm = c.get_registered_model(name)
    aliases: dict[str, list[str]] = {}
    for alias, ver in (rm.aliases or {}).items():
        aliases.setdefault(str(ver), []).append(alias)
    rows = []
    for mv in sorted(c.search_model_versions(f"name='{name}'"), key=lambda m: -int(m.version)):
        row: dict[str, Any] = {
            "version": int(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            "run_id": mv.run_id or "",
            **{k: v for k, v in mv.tags.items()},
        }
        if mv.run_id:
            try:
                r = c.get_run(mv.run_id)
                row.update({f"metric.{k}": v for k, v in r.data.metrics.items()})
                row.update({f"param.{k}": v for k, v in r.data.params.items()})
            except Exception:  # the run may live in a store we cannot reach; tags still tell
                pass
        rows.append(row)
    return rows


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def register_and_promote(
    model_dir: Path,
    loader: str,
    registered_name: str,
    tags: Mapping[str, Any],
    idempotency_key: str,
    promote_metric: str,
    promote_margin: float,
    rescore: Callable[[Any], float] | None = None,
    input_example: Any = None,
    signature: Any = None,
) -> Decision:
    """Log ``model_dir`` as a pyfunc in the active run, register it, promote it if better.

    ``tags`` (the version's metrics, ``eval_data_hash``, ...) go on the new version;
    ``idempotency_key`` (:func:`idempotency_key`) makes a rerun after a crash reuse it. A
    champion evaluated on other data is judged by ``rescore(its predictor)``
    (:func:`decide_promotion`); errors there keep the champion and say why. The run is tagged
    with the registered version and the decision.
    """
    uri = log_predictor_model(
        name="model",
        loader=loader,
        artifacts={"model_dir": str(model_dir)},
        input_example=input_example,
        signature=signature,
    )
    version = register_model(uri, registered_name, tags, idempotency_key=idempotency_key)

    def champion_score(model_uri: str) -> float:
        return float(rescore(load_predictor(model_uri)))  # type: ignore[misc]

    decision = promote_if_better(
        registered_name,
        version,
        promote_metric,
        float(promote_margin),
        rescore=champion_score if rescore is not None else None,
    )
    set_tags({"registered_version": version, "promoted": decision.promoted})
    log.info("registry decision:\n%s", decision.to_markdown())
    return decision
