"""Run a function over many images on every core with Dask, one bad image never stopping the run.

``map_images(func, items, params_dask)`` uses a ``LocalCluster`` of processes (one worker per
core, one thread each: scikit-image filters hold the GIL) unless
``params_dask["scheduler_address"]`` names a running scheduler. Results come back in input
order as :class:`Result` (value or error text), with a tqdm progress bar. Inputs shorter than
``serial_below`` run in a plain loop: a cluster takes seconds to start, more than a few images
take to process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

SERIAL_BELOW = 16


@dataclass
class Result:
    """One item's outcome: ``value`` when ``ok``, else ``error`` ("ExceptionType: message")."""

    ok: bool
    value: Any = None
    error: str = ""


def _safe_call(func: Callable[[Any], Any], item: Any) -> Result:
    try:
        return Result(True, func(item))
    except Exception as exc:  # per-item failures are data, reported by name, not crashes
        log.debug("item failed: %s", traceback.format_exc())
        return Result(False, None, f"{type(exc).__name__}: {exc}")


def n_workers(params_dask: dict[str, Any]) -> int:
    n = int(params_dask.get("n_workers", 0) or 0)
    return n if n > 0 else max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(params_dask: dict[str, Any]) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler_address`` when set, else on a LocalCluster."""
    from distributed import Client, LocalCluster

    address = str(params_dask.get("scheduler_address", "") or "").strip()
    if address:
        with Client(address) as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers(params_dask),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def map_images(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    params_dask: dict[str, Any],
    client: Any = None,
    desc: str = "images",
    serial_below: int = SERIAL_BELOW,
) -> list[Result]:
    """``[func(item) for item in items]`` on all cores; per-item exceptions become errors.

    Parameters
    ----------
    func : a picklable (module-level or ``functools.partial``) function of one item.
    items : small, picklable items (paths or names, not pixel arrays: workers read the files).
    params_dask : the ``dask`` section of params.yaml.
    client : an open ``distributed.Client`` to reuse (several calls, one cluster).
    serial_below : below this many items run serially in this process.
    """
    items = list(items)
    if not items:
        return []
    if client is None and len(items) < serial_below:
        return [_safe_call(func, it) for it in tqdm(items, desc=desc, disable=None)]
    if client is None:
        with dask_client(params_dask) as own:
            return map_images(func, items, params_dask, own, desc, serial_below)
    from distributed import as_completed

    futures = client.map(_safe_call, [func] * len(items), items, pure=False)
    index = {f.key: i for i, f in enumerate(futures)}
    out: list[Result | None] = [None] * len(items)
    with tqdm(total=len(items), desc=desc, disable=None) as bar:
        for fut in as_completed(futures):
            i = index[fut.key]
            try:
                out[i] = fut.result()
            except Exception as exc:  # a worker died (e.g. out of memory): that item fails
                out[i] = Result(False, None, f"{type(exc).__name__}: {exc}")
            fut.release()
            bar.update(1)
    return [r if r is not None else Result(False, None, "lost") for r in out]
