"""Stale DVC stage locks: released only for dead ``dvc`` processes this machine started.

Why at all: dvc 3.67.1 (pinned in pyproject.toml) has no public API or option for a stale lock.
``--wait-for-lock`` waits only for the repository lock (``.dvc/tmp/lock``), never for the
per-output rwlock, and ``dvc.rwlock._check_blockers`` clears an entry only when
``psutil.pid_exists`` is False. A ``dvc`` killed in a container whose PID 1 does not reap orphans
stays a zombie, which ``pid_exists`` reports as alive: every later ``dvc repro`` of those outputs
fails as "busy", and DVC's advice is to delete ``.dvc/tmp/rwlock`` by hand.

Why so narrowly: an rwlock entry holds only a PID, and a PID means something only in the PID
namespace of the machine that wrote it. On a shared volume, or from another container, the entry
may belong to a live ``dvc`` whose PID this machine cannot see (or sees as an unrelated process):
releasing it would let two runs write the same outputs. So the training flow records every
``dvc`` it starts (:func:`record_holder`: PID, start time, and this machine's identity: host
name, boot id, PID namespace), and :func:`release_stale_dvc_locks` releases an entry only when
such a record, made on this same machine, says its process is gone, a zombie, or replaced by
another process with the same PID. Entries of any other process (another host, a person's own
``dvc repro``) are never touched.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

HOLDERS_DIR = Path(".dvc") / "tmp" / "fetal-dvc-holders"


def machine_id() -> str:
    """This machine's identity for PIDs: host name, boot id and PID namespace; empty when any
    part cannot be read (then no PID here can be proven to be ours)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{socket.gethostname()}|{boot}|{pid_ns}"


def _created(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def record_holder(repo: Path, pid: int) -> None:
    """Note that this machine started ``dvc`` process ``pid`` in ``repo``."""
    folder = repo / HOLDERS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "machine": machine_id(), "created": _created(pid)}
    (folder / f"{pid}.json").write_text(json.dumps(record), encoding="utf-8")


def forget_holder(repo: Path, pid: int) -> None:
    """Drop the record of ``pid`` (its ``dvc`` ended normally)."""
    (repo / HOLDERS_DIR / f"{pid}.json").unlink(missing_ok=True)


def is_stale(repo: Path, pid: int) -> bool:
    """True only when this machine recorded ``pid`` and that process is gone, a zombie (killed,
    never reaped) or replaced (same PID, another start time)."""
    import psutil

    try:
        record = json.loads((repo / HOLDERS_DIR / f"{pid}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False  # not started by this flow here: maybe alive where we cannot see it
    here = machine_id()
    if not here or record.get("machine") != here:
        return False
    try:
        proc = psutil.Process(pid)
        zombie = proc.status() == psutil.STATUS_ZOMBIE
        return zombie or proc.create_time() != record.get("created")
    except psutil.NoSuchProcess:
        return True


def release_stale_dvc_locks(repo: Path) -> list[int]:
    """Drop the rwlock entries (``.dvc/tmp/rwlock``) whose holders :func:`is_stale`; the PIDs
    released. Edits through DVC's own guarded editor ``dvc.rwlock._edit_rwlock`` (private in dvc
    3.67.1: re-check it when upgrading; ``tests/integration/test_faults.py`` kills a run
    mid-stage and fails if it stops working)."""
    from dvc.fs import localfs
    from dvc.rwlock import _edit_rwlock  # private in dvc 3.67.1, see above

    lock_dir = repo / ".dvc" / "tmp"
    if not (lock_dir / "rwlock").is_file():
        return []
    stale: set[int] = set()
    with _edit_rwlock(str(lock_dir), localfs, False) as lock:
        for path, info in list(lock["write"].items()):
            if is_stale(repo, int(info["pid"])):
                stale.add(int(info["pid"]))
                del lock["write"][path]
        for path, infos in list(lock["read"].items()):
            keep = [i for i in infos if not is_stale(repo, int(i["pid"]))]
            stale.update(int(i["pid"]) for i in infos if i not in keep)
            if keep:
                lock["read"][path] = keep
            else:
                del lock["read"][path]
    for pid in stale:
        forget_holder(repo, pid)
    return sorted(stale)
