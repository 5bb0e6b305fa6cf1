"""The one module that talks to MLflow: runs, artifacts, model versions, aliases, loading.

Defaults: a ``sqlite:///mlflow.db`` store in the project root with artifacts under
``mlartifacts/``; ``MLFLOW_TRACKING_URI`` overrides (a tracking server, PostgreSQL, ...).
Nothing happens at import time: URIs are set when a function here is first called.

No stored code runs. A version is an MLflow models-from-code pyfunc: its artifacts are the model
folder, the MLmodel metadata naming an allow-listed installed loader
(:mod:`stages.common.registry.loaders`) and :data:`MODEL_CODE`, three lines that import
:class:`ProjectModel` from the installed project; no pickle, no ``code_paths``. At registration
the SHA-256 of every artifact file is recorded as a model-version tag, in the tracking store,
which a writer of the artifact store cannot rewrite; :func:`load_model` downloads a version,
checks every file against those digests and only then loads it (:class:`ModelIntegrityError`
names the version and the file otherwise).

Registration (:mod:`stages.common.registry.registration`) gives a new version the alias
``challenger``; ``champion`` moves only in :mod:`stages.common.registry.champion`, under the
registry lock, after the pipeline's outputs were pushed (``fetal promote``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from stages.common.params import project_root
from stages.common.registry import promotion
from stages.common.registry.loaders import check_loader, resolve_loader
from stages.common.registry.provenance import (  # noqa: F401  (re-exported: tracking.data_hash, ...)
    data_hash,
    digest_problems,
    file_digests,
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


def log_text(text: str, name: str) -> None:
    _mlflow().log_text(text, name)


def set_tags(tags: Mapping[str, Any]) -> None:
    _mlflow().set_tags({k: str(v) for k, v in tags.items()})


# --------------------------------------------------------------------------- models from code


try:  # the model class must subclass PythonModel, which needs mlflow; keep import failures readable
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a hard dependency
    _PythonModel = object  # type: ignore[assignment,misc]

# Tags of a registered version (the tracking store), read before any of its files is.
DIGESTS_TAG = "artifact_sha256"  # {relative path: sha256} of every artifact file
LOADER_TAG = "loader"
EVALUATION_TAG = "evaluation"  # how its items are scored (promotion.Evaluation.scoring)
ITEMS_DIGEST_TAG = "evaluation_sha256"
MODEL_CODE_FILE = "fetal_model.py"
# The whole code a version stores: it imports the installed project. load_model refuses a
# version whose copy differs by one byte, so nothing else stored can ever run.
MODEL_CODE = (
    '"""A fetal-mlops model: the installed loader named in MLmodel reads its folder."""\n'
    "import mlflow.models\n\n"
    "from stages.common.registry.tracking import ProjectModel\n\n"
    "mlflow.models.set_model(ProjectModel())\n"
)


class ModelIntegrityError(RuntimeError):
    """A registered version whose artifacts are not the ones recorded at registration."""


class ProjectModel(_PythonModel):  # type: ignore[misc,valid-type]
    """A pyfunc whose predictor comes from the loader its ``model_config`` names.

    The loader (``"package.module:function"``, allow-listed) takes the artifact paths and
    returns an object with ``predict(model_input) -> pandas.DataFrame``; the registered model
    takes raw inputs.
    """

    def __init__(self) -> None:
        self._predictor: Any = None

    def load_context(self, context: Any) -> None:
        loader = resolve_loader(str((context.model_config or {})["loader"]))
        self._predictor = loader(dict(context.artifacts))

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
    """Log a models-from-code pyfunc in the active run: :data:`MODEL_CODE`, ``artifacts`` and
    the allow-listed ``loader``; its model URI (``pip_requirements`` default:
    :func:`pinned_requirements`)."""
    mlflow = _mlflow()
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / MODEL_CODE_FILE
        code.write_text(MODEL_CODE, encoding="utf-8")
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(code),
            artifacts={k: str(v) for k, v in artifacts.items()},
            model_config={"loader": check_loader(loader)},
            pip_requirements=pinned_requirements()
            if pip_requirements is None
            else pip_requirements,
            input_example=input_example,
            signature=signature,
        )
    return info.model_uri


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


# --------------------------------------------------------------------------- verified loading


def _download(source: str) -> Path:
    """A private copy of a version's artifacts (a local store is copied too, never read in place:
    what is checked is what is loaded)."""
    dst = tempfile.mkdtemp(prefix="fetal-model-")
    return Path(_mlflow().artifacts.download_artifacts(artifact_uri=source, dst_path=dst))


def record_digests(name: str, version: str) -> dict[str, str]:
    """Hash every artifact file of ``name`` v``version`` and store the digests as its tag."""
    mv = client().get_model_version(name, str(version))
    digests = file_digests(_download(mv.source))
    c, value = client(), promotion.dumps(digests)
    upsert(lambda: c.set_model_version_tag(name, str(version), DIGESTS_TAG, value))
    return digests


# What a SQL store says when two writers insert the same key (PostgreSQL, SQLite, MySQL).
UNIQUE_VIOLATION = ("unique constraint", "uniqueviolation", "duplicate entry")


def upsert(write: Callable[[], object]) -> None:
    """Run ``write`` (a tag or alias set), once more if a concurrent writer inserted the same key
    first: MLflow's SQL store sets by select-then-insert, so two registrations of one version at
    once can both insert and one gets a unique violation. The retry finds the row and updates it:
    the digests of one version are the same from both; ``challenger`` ends on the later writer's
    version, as it would had the two run one after the other."""
    try:
        write()
    except Exception as exc:
        if not any(s in str(exc).lower() for s in UNIQUE_VIOLATION):
            raise
        log.info("concurrent write of the same registry key; written again: %s", str(exc)[:200])
        write()


def _version_from_uri(uri: str) -> Any:
    """The model version of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    m = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@([\w-]+))", uri.strip())
    if m is None:
        raise ValueError(
            f"{uri!r}: only registered versions load (models:/NAME/VERSION or models:/NAME@ALIAS):"
            " their artifact digests are what loading checks"
        )
    name, version, alias = m.groups()
    c = client()
    return (
        c.get_model_version(name, version) if version else c.get_model_version_by_alias(name, alias)
    )


def verified_copy(mv: Any) -> Path:
    """A local copy of version ``mv``'s artifacts, every file checked against the digests
    recorded at registration, its stored code against :data:`MODEL_CODE`.

    Raises
    ------
    ModelIntegrityError
        Naming the version and each modified, missing or unexpected file, or a version that has
        no recorded digests (registered before verified loading: a pickled pyfunc).
    """
    label = f"{mv.name} v{mv.version}"
    recorded = mv.tags.get(DIGESTS_TAG)
    if not recorded:
        raise ModelIntegrityError(
            f"{label} has no recorded artifact digests (registered before models-from-code: a "
            "pickled pyfunc, never loaded): register the model again (dvc repro -f of its "
            "register stage, then fetal promote)"
        )
    local = _download(mv.source)
    problems = digest_problems(json.loads(recorded), file_digests(local))
    if problems:
        raise ModelIntegrityError(
            f"{label}: artifacts differ from registration: {'; '.join(problems)}"
        )
    code = local / MODEL_CODE_FILE
    if not code.is_file() or code.read_text(encoding="utf-8") != MODEL_CODE:
        raise ModelIntegrityError(f"{label}: {MODEL_CODE_FILE} is not this project's model code")
    meta = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    check_loader(str(meta["flavors"]["python_function"]["config"]["loader"]))
    return local


def load_model(uri: str) -> Any:
    """A registered version as a pyfunc model (``predict(DataFrame)``), loaded only after
    :func:`verified_copy`: its predictor comes from the installed, allow-listed loader; no
    dependency check (versions are pinned to this environment, and its warnings would precede
    scoring output)."""
    local = verified_copy(_version_from_uri(uri))
    return _mlflow().pyfunc.load_model(str(local), suppress_warnings=True)


def load_predictor(uri: str) -> Any:
    """The project's own predictor inside a registered version (:class:`ProjectModel`), to
    score arrays without DataFrames."""
    return load_model(uri).unwrap_python_model()._predictor


# --------------------------------------------------------------------------- registry


def find_version(name: str, idempotency_key: str) -> str | None:
    """The lowest version of ``name`` registered with ``idempotency_key``, or None."""
    found = client().search_model_versions(f"name='{name}'")  # none yet: an empty list
    same = sorted(int(m.version) for m in found if m.tags.get("idempotency_key") == idempotency_key)
    return str(same[0]) if same else None


def register_model(
    model_uri: str,
    name: str,
    tags: Mapping[str, Any],
    idempotency_key: str,
    description: str = "",
) -> str:
    """Register ``model_uri`` as a version of ``name`` with ``tags`` and the digests of its
    artifacts; alias it ``challenger``. A version with the same ``idempotency_key`` (a rerun
    after a crash) is reused, not added (and its digests recorded if a crash left them out)."""
    c = client()
    try:
        c.create_registered_model(name)
    except Exception as exc:  # already exists (RESOURCE_ALREADY_EXISTS) or raced with another run
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = find_version(name, idempotency_key)
    if version is None:
        all_tags = {k: str(v) for k, v in tags.items()} | {"idempotency_key": idempotency_key}
        all_tags.setdefault("git_commit", git_commit())
        mv = _mlflow().register_model(model_uri, name, tags=all_tags)
        # Two runs registering the same inputs at once both pass the lookup above; the lowest
        # version with the key wins and the loser deletes its own, so the key stays unique.
        version = find_version(name, idempotency_key) or str(mv.version)
        if version != str(mv.version):
            log.info("%s v%s duplicates v%s (concurrent run): removed", name, mv.version, version)
            c.delete_model_version(name, str(mv.version))
        elif description:
            c.update_model_version(name, version, description=description)
    finish_registration(name, version)
    return version


def finish_registration(name: str, version: str) -> None:
    """Record the digests of a version a crash left without them, and alias it ``challenger``."""
    if DIGESTS_TAG not in client().get_model_version(name, version).tags:
        record_digests(name, version)
    c = client()
    upsert(lambda: c.set_registered_model_alias(name, CHALLENGER, version))


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
    """Store a version's per-item evaluation in its run (:func:`promotion.items_artifact`) with
    its scoring and the items' SHA-256 as version tags: the version's side of every later
    paired comparison."""
    c = client()
    data, where = evaluation.items_csv(), Path(promotion.items_artifact(name, version))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / where.name).write_bytes(data)
        c.log_artifact(c.get_model_version(name, version).run_id, str(Path(tmp) / where.name),
                       str(where.parent))  # fmt: skip
    c.set_model_version_tag(name, version, EVALUATION_TAG, promotion.dumps(evaluation.scoring()))
    c.set_model_version_tag(name, version, ITEMS_DIGEST_TAG, hashlib.sha256(data).hexdigest())


IDS = {promotion.ITEM: str, "record": str}  # ids stay text ("001" is not 1)


def version_evaluation(name: str, version: str) -> promotion.Evaluation | None:
    """The per-item evaluation stored with a version (:func:`record_evaluation`), None when it
    has none; :class:`ModelIntegrityError` when the stored items are not the recorded ones."""
    mv = client().get_model_version(name, version)
    scoring, digest = mv.tags.get(EVALUATION_TAG), mv.tags.get(ITEMS_DIGEST_TAG)
    if not scoring or not digest:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client().download_artifacts(mv.run_id, promotion.items_artifact(name, version), tmp)
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ModelIntegrityError(f"{name} v{version}: stored evaluation items were modified")
        items = pd.read_csv(path, dtype=IDS)
    return promotion.Evaluation.from_stored(items, json.loads(scoring))


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
