"""The registry lock: one champion decision at a time, for every worker sharing the registry.

A decision reads the champion, compares, writes a history entry and moves the alias; two at once
could both read the same champion and the stale one could win, or both write the same history
sequence number. Every decision therefore runs under one lock, chosen from where the registry is:

- ``FETAL_REGISTRY_LOCK_URI`` when set: ``postgresql://...`` (a PostgreSQL advisory lock: every
  machine that can reach the database shares it) or ``file:///path`` (an fcntl lock on that
  file: every process of one machine, or of machines sharing a file system with POSIX locks);
- else a PostgreSQL MLflow backend (``MLFLOW_TRACKING_URI=postgresql://...``): an advisory lock
  in that database;
- else a local sqlite store (``sqlite:///path/mlflow.db``, the default): an fcntl lock on
  ``path/mlflow.db.lock`` next to it (only processes of this machine can write that store);
- a tracking *server* (``http(s)://``) hides its database: without ``FETAL_REGISTRY_LOCK_URI``
  no decision is taken (:class:`RegistryLockError` says what to set) rather than one that races.

Why an advisory lock rather than a Prefect global concurrency limit: ``fetal promote`` and
``dvc repro`` run without Prefect, and the advisory lock is held by the database session, so a
killed decider releases it when its connection drops (the fcntl lock likewise when its process
dies): no lock ever outlives its holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_URI_ENV = "FETAL_REGISTRY_LOCK_URI"
LOCK_NAME = "fetal-mlops registry decisions"
POLL_S = 0.2


class RegistryLockError(RuntimeError):
    """No shared lock can be chosen, or it could not be taken in time."""


def advisory_key(name: str = LOCK_NAME) -> int:
    """The signed 64-bit PostgreSQL advisory-lock key of ``name`` (stable across processes)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_target(tracking_uri: str, lock_uri: str = "") -> tuple[str, str]:
    """``("postgresql", dsn)`` or ``("file", path)``: the lock every decider takes.

    Raises
    ------
    RegistryLockError
        For a tracking server without ``FETAL_REGISTRY_LOCK_URI``, or an unknown lock URI.
    """
    uri = lock_uri.strip() or tracking_uri
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "postgresql", "postgresql:" + uri.split(":", 1)[1]  # drop a +driver suffix
    if scheme == "file" and lock_uri.strip():
        return "file", uri[len("file://") :] if uri.startswith("file://") else uri[5:]
    if scheme == "sqlite" and not lock_uri.strip():
        return "file", uri[len("sqlite:///") :] + ".lock"
    if scheme in ("http", "https") and not lock_uri.strip():
        raise RegistryLockError(
            f"MLFLOW_TRACKING_URI is a tracking server ({uri}): its database is out of sight, so "
            f"set {LOCK_URI_ENV} to a lock every worker shares (postgresql://... of the server's "
            "database, or file:///... on one machine) before deciding champions"
        )
    raise RegistryLockError(f"cannot lock registry decisions with {uri!r} ({LOCK_URI_ENV})")


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"registry lock {path} busy for {timeout_s:.0f} s"
                    raise RegistryLockError(msg) from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _advisory_lock(dsn: str, timeout_s: float) -> Iterator[None]:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    key, deadline = advisory_key(), time.monotonic() + timeout_s
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise RegistryLockError(f"registry advisory lock busy for {timeout_s:.0f} s")
                time.sleep(POLL_S)
            try:
                yield
            finally:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()  # a session's advisory locks end with it, even after an error


@contextlib.contextmanager
def registry_lock(tracking_uri: str, timeout_s: float = 600.0) -> Iterator[str]:
    """Hold the lock of :func:`lock_target` (``FETAL_REGISTRY_LOCK_URI`` or the store's own);
    yields what was locked (``postgresql advisory lock`` or the lock file's path)."""
    kind, target = lock_target(tracking_uri, os.environ.get(LOCK_URI_ENV, ""))
    if kind == "postgresql":
        with _advisory_lock(target, timeout_s):
            yield "postgresql advisory lock"
    else:
        with _file_lock(Path(target), timeout_s):
            yield target
