"""``fetal serve``: a registered model over HTTP, behind a credential and a body-size cap.

Speaks MLflow's scoring protocol on ``POST /invocations`` (JSON bodies ``dataframe_records``,
``dataframe_split`` or ``inputs``; answer ``{"predictions": [...]}``), so clients of ``mlflow
models serve`` keep working, with what a hospital network needs in front of a model:

- **a credential**: ``Authorization: Bearer <token>``, the token from ``$FETAL_SERVE_TOKEN`` or a
  0600 file (``make services`` makes one in ``.secrets/serve-token``); without it 401. The server
  does not start without a token of at least 16 characters. ``GET /ping`` answers without one
  (a health check that says nothing);
- **a body-size cap** (``serve.max_body_kb``): a body over it, declared or streamed, gets 413 and
  is never parsed (it is read and dropped up to 8 times the cap, so that the client can read the
  413, then the connection is closed); at most ``serve.max_records`` records per request;
- **errors that name the field and the reason, and nothing else**: a bad body gets 400 with
  ``{"error_code": "BAD_REQUEST", "field": ..., "message": "<field>: <reason>"}``, never a stack
  trace, a server path or a piece of the body. The payload is checked against the model's input
  schema (its MLflow signature) before the model sees it: missing and unknown fields, lists that
  are not flat lists of finite numbers. What the model itself refuses (a record too short) comes
  back as its first line, with quoted values and paths removed. Anything unexpected is a 500
  "internal error" (the traceback goes to the server log only);
- **only registered models** (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``), loaded through
  ``stages.common.registry.tracking.load_model`` (which verifies the registered artifacts);
- optional HTTPS (``--tls-cert``/``--tls-key``: ``.secrets/tls/server.pem`` is made for it).

Why an in-process app rather than nginx in front of ``mlflow models serve``: one process and no
root to install or configure a proxy; the model is loaded through the project's own
``tracking.load_model`` (MLflow's server loads it by itself, past any check the registry adds);
and the errors are ours (MLflow's scoring server answers a bad payload with its stack trace and
server paths). Predictions run one at a time in a worker thread (the model is not shared between
threads); JSON parsing is bounded by the cap.

Examples::

    FETAL_SERVE_TOKEN=... fetal serve --port 5001
    curl -s http://127.0.0.1:5001/invocations -H "Authorization: Bearer $FETAL_SERVE_TOKEN" \\
        -H 'Content-Type: application/json' -d @record.json
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.settings import settings

log = logging.getLogger(__name__)

TOKEN_ENV = "FETAL_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
FORMATS = ("dataframe_records", "dataframe_split", "inputs")
MAX_REASON_CHARS = 200
DRAIN_FACTOR = 8  # an oversized body is read (and dropped) up to this many times the cap


@settings
class ServeSettings:
    """The ``serve`` section of params.yaml."""

    max_body_kb: int  # KB, largest request body read; larger: HTTP 413
    max_records: int  # records per request at most


class RequestError(Exception):
    """A request refused with ``status``: the field and the reason, nothing else."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason


@dataclass(frozen=True)
class InputField:
    """One input of the model's signature: a list of numbers (``is_list``) or one number."""

    name: str
    is_list: bool
    required: bool


def input_fields(model: Any) -> list[InputField] | None:
    """The model's input fields from its MLflow signature, or None when it has none."""
    try:
        schema = model.metadata.get_input_schema()
    except AttributeError:
        return None
    if schema is None or not getattr(schema, "has_input_names", lambda: False)():
        return None
    return [
        InputField(spec.name, type(spec.type).__name__ == "Array", bool(spec.required))
        for spec in schema.inputs
    ]


# --------------------------------------------------------------------------- payloads


def parse_json(body: bytes) -> Any:
    """The JSON document of ``body`` (integers as floats: the schema's numbers are doubles)."""
    if not body.strip():
        raise RequestError(400, "body", "empty; expected a JSON object")
    try:
        return json.loads(body, parse_int=float)
    except (ValueError, RecursionError):
        raise RequestError(400, "body", "not valid JSON") from None


def payload_records(doc: Any, max_records: int) -> tuple[str, list[dict[str, Any]]]:
    """``(format, records)`` of an MLflow scoring payload, each record a dict of fields."""
    if not isinstance(doc, dict):
        raise RequestError(400, "body", f"must be a JSON object with one of {', '.join(FORMATS)}")
    keys = [k for k in FORMATS if k in doc]
    if len(keys) != 1 or len(doc) != 1:
        raise RequestError(400, "body", f"must hold exactly one of {', '.join(FORMATS)}")
    fmt, value = keys[0], doc[keys[0]]
    records = RECORD_READERS[fmt](value)
    if not records:
        raise RequestError(400, fmt, "holds no record")
    if len(records) > max_records:
        raise RequestError(400, fmt, f"holds {len(records)} records; at most {max_records}")
    return fmt, records


def _records(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise RequestError(400, "dataframe_records", "must be a list of objects")
    return value


def _split(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not isinstance(value.get("columns"), list):
        raise RequestError(400, "dataframe_split", "must be an object with columns and data")
    columns, data = value["columns"], value.get("data")
    if not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
        raise RequestError(400, "dataframe_split.columns", "must be distinct names")
    if not isinstance(data, list) or not all(isinstance(r, list) for r in data):
        raise RequestError(400, "dataframe_split.data", "must be a list of rows")
    for i, row in enumerate(data):
        if len(row) != len(columns):
            raise RequestError(400, f"dataframe_split.data[{i}]", "length differs from columns")
    return [dict(zip(columns, row, strict=True)) for row in data]


def _inputs(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
        raise RequestError(400, "inputs", "must be an object of columns (lists, one per record)")
    sizes = {len(v) for v in value.values()}
    if len(sizes) != 1:
        raise RequestError(400, "inputs", "columns hold different numbers of records")
    n = sizes.pop()
    return [{k: v[i] for k, v in value.items()} for i in range(n)]


RECORD_READERS = {"dataframe_records": _records, "dataframe_split": _split, "inputs": _inputs}


def value_reason(value: Any, is_list: bool) -> str | None:
    """Why a field's value is refused (``is_list``: a flat list of finite numbers expected)."""
    if not is_list:
        return _number_reason(value)
    if not isinstance(value, list):
        return "must be a list of numbers"
    if not value:
        return "is empty"
    if any(isinstance(v, list | dict) for v in value):
        return "is not a flat list of numbers"
    if any(isinstance(v, bool) or not isinstance(v, float) for v in value):
        return "holds non-numeric values"
    if any(math.isnan(v) for v in value):
        return "holds NaN values; mark missing samples with 0"
    if any(math.isinf(v) for v in value):
        return "holds infinite values"
    return None


def _number_reason(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, float):
        return "must be a number"
    return None if math.isfinite(value) else "must be a finite number"


def check_records(fmt: str, records: Sequence[dict], fields: list[InputField] | None) -> None:
    """Raise :class:`RequestError` naming the first field (``fmt[i].name``) that the model's
    signature refuses: missing, unknown, or of the wrong kind."""
    if fields is None:  # no signature: lists must still be flat finite numbers
        for i, record in enumerate(records):
            for name, value in record.items():
                why = value_reason(value, True) if isinstance(value, list) else None
                if why:
                    raise RequestError(400, f"{fmt}[{i}].{_name(name)}", why)
        return
    known = {f.name: f for f in fields}
    for i, record in enumerate(records):
        for name in record:
            if name not in known:
                raise RequestError(400, f"{fmt}[{i}].{_name(name)}", "not an input of the model "
                                   f"(inputs: {', '.join(known)})")  # fmt: skip
        for field in fields:
            where = f"{fmt}[{i}].{field.name}"
            if field.name not in record:
                if field.required:
                    raise RequestError(400, where, "missing (required)")
                continue
            why = value_reason(record[field.name], field.is_list)
            if why:
                raise RequestError(400, where, why)


def _name(name: str) -> str:
    """A field name from the body, shown only when it is a plain identifier."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name) else "<field>"


def model_reason(exc: BaseException) -> str:
    """The first line of what the model said, without quoted values, paths or MLflow's echo of
    the data (everything before its ``Error: ``), at most 200 characters."""
    lines = str(exc).rsplit("Error: ", 1)[-1].strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<value>", text)
    text = re.split(r"['\"]", text, maxsplit=1)[0]  # a cut quoted value: drop the rest
    text = re.sub(r"(?<![\w])/(?:[\w.-]+/)+[\w.-]*", "<path>", text)
    return text[:MAX_REASON_CHARS].strip() or "refused by the model"


def predictions(frame: Any) -> list[dict[str, Any]]:
    """The model's output as JSON-ready records (NaN -> null, NumPy scalars -> Python)."""
    out = []
    for row in frame.to_dict("records"):
        clean = {}
        for key, value in row.items():
            value = value.item() if hasattr(value, "item") else value
            clean[str(key)] = (
                None if isinstance(value, float) and not math.isfinite(value) else value
            )
        out.append(clean)
    return out


# --------------------------------------------------------------------------- the app


def error_response(exc: RequestError) -> Any:
    from fastapi.responses import JSONResponse

    code = {401: "UNAUTHENTICATED", 413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}
    body = {"error_code": code.get(exc.status, "BAD_REQUEST"), "field": exc.field,
            "message": f"{exc.field}: {exc.reason}"}  # fmt: skip
    headers = {"WWW-Authenticate": 'Bearer realm="fetal-serve"'} if exc.status == 401 else None
    return JSONResponse(body, status_code=exc.status, headers=headers)


def check_token(header: str | None, token: str) -> None:
    """Raise 401 unless ``header`` is ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise RequestError(401, "Authorization", "a valid Bearer token is required")


async def read_body(request: Any, max_bytes: int) -> bytes:
    """The body, refused with 413 when its declared or streamed length exceeds ``max_bytes``.

    An oversized body is read on and dropped (never parsed) up to ``DRAIN_FACTOR`` times the cap,
    so that the client, still sending, can read the 413; beyond that the connection is closed.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(400, "Content-Length", "not a number")
    too_large = declared is not None and int(declared) > max_bytes
    chunks, size = [], 0
    if not too_large or int(declared) <= DRAIN_FACTOR * max_bytes:  # type: ignore[arg-type]
        async for chunk in request.stream():
            size += len(chunk)
            if size > DRAIN_FACTOR * max_bytes:
                break
            if size <= max_bytes:
                chunks.append(chunk)
    if too_large or size > max_bytes:
        got = f"{int(declared)} bytes" if too_large else f"more than {max_bytes} bytes"  # type: ignore[arg-type]
        raise RequestError(413, "body", f"{got}; at most {max_bytes}")
    return b"".join(chunks)


def create_app(model: Any, token: str, max_body_bytes: int, max_records: int) -> Any:
    """The FastAPI app serving ``model`` (anything with ``predict(DataFrame) -> DataFrame``)."""
    import pandas as pd
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"the serving token must have at least {MIN_TOKEN_CHARS} characters")
    fields = input_fields(model)
    lock = threading.Lock()  # one prediction at a time: the model is not shared between threads
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def predict(frame: pd.DataFrame) -> list[dict[str, Any]]:
        with lock:
            return predictions(model.predict(frame))

    @app.get("/ping")
    @app.get("/health")
    def ping() -> Response:
        return Response(status_code=200)

    async def invocations(request: Request) -> Response:
        try:
            check_token(request.headers.get("authorization"), token)
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                raise RequestError(415, "Content-Type", "must be application/json")
            doc = parse_json(await read_body(request, max_body_bytes))
            fmt, records = payload_records(doc, max_records)
            check_records(fmt, records, fields)
            try:
                out = await run_in_threadpool(predict, pd.DataFrame.from_records(records))
            except (ValueError, TypeError, KeyError) as exc:
                raise RequestError(400, "input", model_reason(exc)) from None
            except Exception as exc:  # MlflowException (schema) and the like: the reason only
                if type(exc).__name__ != "MlflowException":
                    raise
                raise RequestError(400, "input", model_reason(exc)) from None
        except RequestError as exc:
            log.info("refused %s: %s", exc.status, exc)
            return error_response(exc)
        except Exception:  # the traceback is for the server log, never for the caller
            log.exception("prediction failed")
            body = {"error_code": "INTERNAL_ERROR", "message": "internal error"}
            return JSONResponse(body, status_code=500)
        return JSONResponse({"predictions": out})

    # this module defers annotations (strings); FastAPI needs the Request class itself
    invocations.__annotations__ = {"request": Request, "return": Response}
    app.post("/invocations")(invocations)
    return app


# --------------------------------------------------------------------------- fetal serve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="registered model URI (default: the CTG champion, "
                             "models:/<register_ctg.registered_name>@champion)")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--token-file", type=Path, default=None,
                        help=f"file holding the Bearer token (default: ${TOKEN_ENV}, else "
                             ".secrets/serve-token)")  # fmt: skip
    parser.add_argument("--tls-cert", type=Path, default=None, help="serve HTTPS: certificate")
    parser.add_argument("--tls-key", type=Path, default=None, help="serve HTTPS: private key")


def read_token(token_file: Path | None) -> str:
    """``token_file``'s content, else ``$FETAL_SERVE_TOKEN``, else ``.secrets/serve-token``."""
    from stages.common.services import secrets_dir

    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip()
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip()
    default = secrets_dir() / "serve-token"
    return default.read_text(encoding="utf-8").strip() if default.is_file() else ""


def run(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from stages.common.params import load_params
    from stages.common.registry import tracking
    from stages.common.scoring import registered_model_uri
    from stages.common.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_settings(ServeSettings, "serve")
    token = read_token(args.token_file)
    default = tracking.champion_uri(load_params("register_ctg")["registered_name"])
    try:
        if len(token) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"no serving token: set {TOKEN_ENV} (at least {MIN_TOKEN_CHARS} characters) "
                "or run `make services` (.secrets/serve-token)"
            )
        uri = registered_model_uri(args.model or default)
    except ValueError as exc:
        print(f"fetal serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(tracking.load_model(uri), token, cfg.max_body_kb * 1024, cfg.max_records)
    log.info("serving %s on %s:%d", uri, args.host, args.port)
    tls = {"ssl_certfile": str(args.tls_cert), "ssl_keyfile": str(args.tls_key)}
    uvicorn.run(app, host=args.host, port=args.port, workers=1, server_header=False,
                **(tls if args.tls_cert else {}))  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    from stages.cli import run_command

    return run_command("serve", argv)


if __name__ == "__main__":
    raise SystemExit(main())
