"""Fail-safe batch scoring: list the inputs safely, judge each one alone, always write the CSV.

What both ``fetal score-ctg`` and ``fetal score-us`` promise their users:

- **Nothing outside the input folder is opened** unless asked: symlinks, and entries whose
  ``resolve()`` leaves the folder, are rejected by name (``--follow-links`` follows links wherever
  they point: the user asked for it). Only regular files are ever opened (a link to a FIFO or a
  device is rejected even with the flag). The checks look at the paths before opening; they guard
  against mistakes and hostile files, not against someone swapping files during the run.
- **Size limits before decoding**: ``max_file_bytes`` from ``stat``; images are also held to a
  pixel limit read from the header (:mod:`stages.common.intake.images`).
- **One bad file is one row**: any exception while reading or scoring a file becomes that file's
  ``error`` (exception type and the first line of its message); the run goes on.
- **The CSV is always written** (atomically), even when every file failed, and the exit code says
  how it went: :data:`EXIT_OK`, :data:`EXIT_SOME_FAILED`, :data:`EXIT_NONE_SCORED`
  (:data:`EXIT_USAGE` is argparse's).
- **Quiet**: library start-up noise (TensorFlow C++ and absl logs, MLflow warnings) goes to a log
  file (:func:`quiet_libraries`); the user sees a progress bar and a short summary on stderr.

Usage (a scoring command's ``run``)::

    from stages.common import scoring

    with scoring.quiet_libraries(args.log_file) as user:      # user: the stream people read
        files, rejected = scoring.input_files(args.folder, ["*.png", "*.jpg"],
                                              args.follow_links, max_file_bytes)
        scorer = load_scorer(...)                               # noise goes to the log file
        rows = scoring.judge_each(files, lambda p: score_one(scorer, p), key="image",
                                  stream=user)
        return scoring.finish(args.out, rejected + rows, COLUMNS, key="image",
                              prog="score-us", stream=user)

``score_one`` returns a dict of the row's columns (without ``error``); ``rejected`` rows carry
only the key and ``error``. A row counts as scored when its ``error`` is empty and its
``scored_column`` is not empty (an abstention: no error, no score).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

# pandas (via stages.common.io) and tqdm are imported where used: a command's ``--help``
# imports this module and should stay instant.

# Exit codes of the scoring commands (2 is argparse's usage error).
EXIT_OK = 0  # every file judged without error (scored, or abstained with a reason)
EXIT_USAGE = 2  # bad options or no such input folder: nothing was read, no CSV
EXIT_SOME_FAILED = 3  # some files rejected or failed (named in the CSV); the others scored
EXIT_NONE_SCORED = 4  # no file scored (all rejected, failed or abstained, or none found)

ERROR = "error"
# What a scoring service may load: a registered model by alias or version, nothing else (no
# runs:/, file paths or URLs whose artifacts nobody registered).
REGISTERED_MODEL_URI = re.compile(
    r"models:/[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[A-Za-z][A-Za-z0-9_-]{0,63}|/[0-9]{1,9})"
)
NOISY_LOGGERS = ("tensorflow", "absl", "keras", "mlflow", "h5py", "py.warnings", "matplotlib")
LOG_FILE_ENV = "FETAL_SCORE_LOG"


def add_input_arguments(parser: Any, prog: str) -> None:
    """``--follow-links`` and ``--log-file``: the options every scoring command shares."""
    parser.add_argument(
        "--follow-links",
        action="store_true",
        help="follow symlinks in FOLDER wherever they point (default: refuse them)",
    )
    parser.add_argument(
        "--log-file", type=Path, help=f"library messages (default {default_log_file(prog)})"
    )


def registered_model_uri(uri: str) -> str:
    """``uri`` when it names a registered model (``models:/NAME@ALIAS``, ``models:/NAME/N``).

    Raises
    ------
    ValueError
        Any other URI (``runs:/``, a path, a URL): a scoring service that whoever reaches it can
        point at arbitrary artifacts would load code nobody registered.
    """
    if REGISTERED_MODEL_URI.fullmatch(uri) is None:
        raise ValueError(
            f"model URI {uri[:80]!r} refused: only a registered model, models:/NAME@ALIAS or "
            "models:/NAME/VERSION"
        )
    return uri


def default_log_file(prog: str) -> Path:
    """``$FETAL_SCORE_LOG`` or ``<tmp>/fetal-<prog>.log``: outside the project, never tracked."""
    return Path(os.environ.get(LOG_FILE_ENV) or Path(tempfile.gettempdir()) / f"fetal-{prog}.log")


def one_line(exc: BaseException) -> str:
    """``ExcType: first line of the message`` (the type alone when there is no message)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_path(
    path: str | Path,
    folder: str | Path,
    follow_links: bool = False,
    max_file_bytes: int | None = None,
) -> str | None:
    """Why ``path`` must not be opened, or None when it may be. Looks, never opens.

    Parameters
    ----------
    path : path
        A directory entry of ``folder`` (e.g. a ``.dat`` file a header names).
    folder : path
        The input folder given by the user.
    follow_links : bool
        Follow symlinks wherever they point (``--follow-links``).
    max_file_bytes : int, optional
        Largest accepted size in bytes (of the target, for a followed link).
    """
    path, root = Path(path), Path(folder).resolve()
    if not follow_links:
        if path.is_symlink():
            return "symlink: not followed (use --follow-links)"
        if not _inside(path.resolve(), root):
            return "outside_folder: resolves outside the input folder"
    if not path.exists():
        return "missing: broken link or no such file" if path.is_symlink() else "missing"
    if not path.is_file():
        return "not_a_regular_file"
    size = path.stat().st_size
    if max_file_bytes is not None and size > max_file_bytes:
        return f"too_large: {size} bytes > max_file_bytes {max_file_bytes}"
    return None


def input_files(
    folder: str | Path,
    patterns: Sequence[str],
    follow_links: bool = False,
    max_file_bytes: int | None = None,
    key: str = "item",
    name: Callable[[Path], str] = lambda p: p.name,
) -> tuple[list[Path], list[dict[str, str]]]:
    """The files of ``folder`` matching ``patterns`` that may be opened, and the rejected ones.

    Not recursive. Matching is on the name, case-insensitive for the suffix (``*.png`` matches
    ``A.PNG``). Returns ``(files, rejected)``: files sorted by name; rejected rows are
    ``{key: name(path), "error": reason}`` (reasons of :func:`check_path`).
    """
    folder = Path(folder)
    seen: dict[str, Path] = {}
    for entry in folder.iterdir():
        if any(_match(entry.name, p) for p in patterns):
            seen[entry.name] = entry
    files, rejected = [], []
    for entry_name in sorted(seen):
        path = seen[entry_name]
        reason = check_path(path, folder, follow_links, max_file_bytes)
        if reason is None:
            files.append(path)
        else:
            rejected.append({key: name(path), ERROR: reason})
    return files, rejected


def _match(name: str, pattern: str) -> bool:
    from fnmatch import fnmatchcase

    return fnmatchcase(name, pattern) or fnmatchcase(name.lower(), pattern.lower())


def judge_each(
    items: Iterable[Path],
    fn: Callable[[Path], dict[str, Any]],
    key: str = "item",
    name: Callable[[Path], str] = lambda p: p.name,
    stream: TextIO | None = None,
    desc: str = "scoring",
) -> list[dict[str, Any]]:
    """``fn(item)`` for each item, one row each; an exception becomes the row's ``error``.

    Rows are ``{key: name(item), **fn(item), "error": ""}`` or, when ``fn`` raised,
    ``{key: name(item), "error": one_line(exc)}``. A progress bar (tqdm) is drawn on ``stream``
    (default stderr) when it is a terminal. KeyboardInterrupt and SystemExit are not caught.
    """
    from tqdm import tqdm

    items = list(items)
    out = stream or sys.stderr
    rows = []
    for item in tqdm(items, desc=desc, unit="file", file=out, disable=not _isatty(out)):
        try:
            rows.append({key: name(item), **fn(item), ERROR: ""})
        except Exception as exc:  # one file's failure is that file's row, never the run's
            rows.append({key: name(item), ERROR: one_line(exc)})
    return rows


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def exit_code(n_rows: int, n_scored: int, n_failed: int) -> int:
    """:data:`EXIT_NONE_SCORED` if nothing scored, :data:`EXIT_SOME_FAILED` if any file
    failed, else :data:`EXIT_OK`."""
    if n_scored == 0:
        return EXIT_NONE_SCORED
    return EXIT_SOME_FAILED if n_failed else EXIT_OK


def finish(
    out: str | Path,
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str],
    key: str,
    prog: str,
    scored_column: str | None = None,
    stream: TextIO | None = None,
) -> int:
    """Write the rows (sorted by ``key``) to ``out`` atomically, print a summary, return the code.

    The CSV always has ``columns`` (``error`` added last when missing), even with no rows. Each
    failed file is named on ``stream`` with its reason. ``scored_column`` (e.g. ``probability``)
    tells a score from an abstention; without it every row without error counts as scored.
    """
    import pandas as pd

    from stages.common.io import write_csv

    cols = [*columns, *([ERROR] if ERROR not in columns else [])]
    table = pd.DataFrame(list(rows), columns=cols)
    table = table.sort_values(key, kind="stable").reset_index(drop=True)
    write_csv(out, table)
    ok = table[ERROR].fillna("") == ""
    scored = ok & table[scored_column].notna() if scored_column else ok
    n, n_scored, n_failed = len(table), int(scored.sum()), int((~ok).sum())
    user = stream or sys.stderr
    for _, row in table[~ok].iterrows():
        print(f"{prog}: {row[key]}: {row[ERROR]}", file=user)
    abstained = n - n_scored - n_failed
    print(
        f"{prog}: {n_scored} scored, {abstained} abstained, {n_failed} failed of {n} -> {out}",
        file=user,
    )
    return exit_code(n, n_scored, n_failed)


@contextlib.contextmanager
def quiet_libraries(log_file: str | Path | None, prog: str = "fetal") -> Iterator[TextIO]:
    """Send library noise to ``log_file`` for the block; yield the stream the user reads.

    Sets ``TF_CPP_MIN_LOG_LEVEL=2`` and ``MLFLOW_CONFIGURE_LOGGING=false`` unless already set
    (they act when TensorFlow / MLflow are imported, which callers do inside the block), routes
    the ``logging`` records of all loggers (TensorFlow, absl, MLflow, warnings, ours) to the
    file, and points file descriptor 2 at it, so C++ logs written straight to stderr land
    there too. The yielded stream is the original stderr: print the progress and the summary
    on it. Everything is restored on exit. ``log_file`` None = :func:`default_log_file`.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    path = Path(log_file) if log_file else default_log_file(prog)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as log_stream:
        handler = logging.StreamHandler(log_stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        saved_root = (root.handlers[:], root.level)
        root.handlers, root.level = [handler], logging.INFO
        saved_noisy = {}
        for name in NOISY_LOGGERS:
            lg = logging.getLogger(name)
            saved_noisy[name] = (lg.handlers[:], lg.propagate)
            lg.handlers, lg.propagate = [], True
        logging.captureWarnings(True)
        with _stderr_fd_to(log_stream) as user:
            try:
                yield user
            finally:
                logging.captureWarnings(False)
                root.handlers, root.level = saved_root
                for name, (handlers, propagate) in saved_noisy.items():
                    lg = logging.getLogger(name)
                    lg.handlers, lg.propagate = handlers, propagate


@contextlib.contextmanager
def _stderr_fd_to(log_stream: TextIO) -> Iterator[TextIO]:
    """Point fd 2 (and ``sys.stderr`` when it writes to fd 2) at ``log_stream``.

    Yields the user's stream: a duplicate of the original fd 2 when ``sys.stderr`` wrote there,
    else ``sys.stderr`` itself (a test's capture object, which the redirect does not touch).
    """
    try:
        uses_fd2 = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):
        uses_fd2 = False
    sys.stderr.flush()
    saved_fd = os.dup(2)
    user: TextIO = os.fdopen(os.dup(saved_fd), "w", buffering=1) if uses_fd2 else sys.stderr
    saved_sys = sys.stderr
    os.dup2(log_stream.fileno(), 2)
    if uses_fd2:
        sys.stderr = log_stream
    try:
        yield user
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = saved_sys
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if user is not saved_sys:
            user.close()
