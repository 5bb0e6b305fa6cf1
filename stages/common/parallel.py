"""Run a function over many images on every core with Dask, one bad image never stopping the run.

``map_images(func, items, dask)`` uses a ``LocalCluster`` of processes on the loopback interface
(one worker per core, one thread each: scikit-image filters hold the GIL) unless
``dask.scheduler_address`` names a running scheduler. Results come back in input order as
:class:`Result` (value or error text), with a tqdm progress bar. Inputs shorter than
``serial_below`` run in a plain loop: a cluster takes seconds to start, more than a few images
take to process.

**A scheduler beyond this machine speaks TLS.** Dask's protocol unpickles what it receives, so
whoever can talk to a scheduler or a worker runs code there. A remote ``scheduler_address`` must
be ``tls://host:port`` (``tcp://`` is accepted on the loopback interface only), and the client
presents the certificate of the cluster's own CA: :func:`dask_client` builds its
``distributed.Security`` from Dask's configuration, i.e. the environment that ``make services``
writes to ``.secrets/client.env`` (``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``,
``DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT``, ``DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY``). The
scheduler and its workers require the same CA's certificates on both ends (mutual TLS), so a
worker or a client without one is refused at the handshake.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import field_validator
from tqdm import tqdm

from stages.common.settings import parse_settings, settings

log = logging.getLogger(__name__)

SERIAL_BELOW = 16
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
TLS_ENV = (
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT",
    "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY",
)


class DaskSecurityError(RuntimeError):
    """A scheduler address that would send work unencrypted, or TLS without its files."""


@settings
class DaskSettings:
    """The ``dask`` section of params.yaml."""

    scheduler_address: str  # "" = a local cluster; "tls://host:8786" = a running scheduler
    n_workers: int  # local cluster workers (0 = one per core)

    @field_validator("scheduler_address")
    @classmethod
    def _encrypted_beyond_loopback(cls, address: str) -> str:
        return check_address(address)


def check_address(address: str) -> str:
    """``address`` itself when it is empty, ``tls://...``, or ``tcp://`` on the loopback interface.

    Raises
    ------
    ValueError
        A ``tcp://`` (or schemeless) address of another machine: unencrypted and
        unauthenticated, refused.
    """
    address = address.strip()
    if not address or address.startswith("tls://"):
        return address
    host = address.removeprefix("tcp://").rsplit(":", 1)[0]
    if host in LOOPBACK:
        return address
    raise ValueError(
        f"{address!r}: a scheduler on another machine must be tls://host:port (mutual TLS; "
        "`make services` starts one); tcp:// is allowed on 127.0.0.1 only"
    )


def as_dask_settings(dask: DaskSettings | Mapping[str, Any]) -> DaskSettings:
    """The typed ``dask`` settings (a params mapping is validated as the stages validate it)."""
    return dask if isinstance(dask, DaskSettings) else parse_settings(DaskSettings, dask, "dask")


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


def n_workers(dask: DaskSettings | Mapping[str, Any]) -> int:
    n = as_dask_settings(dask).n_workers
    return n if n > 0 else max(1, os.cpu_count() or 1)


def client_security(address: str) -> Any:
    """The ``distributed.Security`` for ``address``: from Dask's configuration (the
    ``DASK_DISTRIBUTED__COMM__TLS__*`` environment) for ``tls://``.

    Raises
    ------
    DaskSecurityError
        ``tls://`` without a CA file and a client certificate configured.
    """
    from distributed import Security

    security = Security()
    if address.startswith("tls://") and not (security.tls_ca_file and security.tls_client_cert):
        raise DaskSecurityError(
            f"dask.scheduler_address is {address} but no TLS files are configured: set "
            + ", ".join(TLS_ENV)
            + " (`source .secrets/client.env` on a machine set up by `make services`)"
        )
    return security


@contextlib.contextmanager
def dask_client(dask: DaskSettings | Mapping[str, Any]) -> Iterator[Any]:
    """A ``distributed.Client``: on ``scheduler_address`` when set (TLS from the environment),
    else on a LocalCluster bound to 127.0.0.1."""
    from distributed import Client, LocalCluster

    cfg = as_dask_settings(dask)
    if cfg.scheduler_address:
        address = cfg.scheduler_address
        with Client(address, security=client_security(address), timeout="30s") as client:
            yield client
        return
    with (
        LocalCluster(
            n_workers=n_workers(cfg),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.WARNING,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def map_images(
    func: Callable[[Any], Any],
    items: Sequence[Any],
    dask: DaskSettings | Mapping[str, Any],
    client: Any = None,
    desc: str = "images",
    serial_below: int = SERIAL_BELOW,
) -> list[Result]:
    """``[func(item) for item in items]`` on all cores; per-item exceptions become errors.

    Parameters
    ----------
    func : a picklable (module-level or ``functools.partial``) function of one item.
    items : small, picklable items (paths or names, not pixel arrays: workers read the files).
    dask : the ``dask`` section of params.yaml (typed, or its mapping).
    client : an open ``distributed.Client`` to reuse (several calls, one cluster).
    serial_below : below this many items run serially in this process.
    """
    items = list(items)
    if not items:
        return []
    if client is None and len(items) < serial_below:
        return [_safe_call(func, it) for it in tqdm(items, desc=desc, disable=None)]
    if client is None:
        with dask_client(dask) as own:
            return map_images(func, items, dask, own, desc, serial_below)
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
