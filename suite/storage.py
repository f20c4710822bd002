"""Where rows live on disk, and the one writer discipline: no row once written
is ever lost or overwritten, whoever else writes at the same time.

A job folder holds:

- ``rows/<utc-time-ns>-<host>-<pid>-<random>.parquet``: one immutable file per
  write (a part). It is written under a temporary name, fsynced and renamed
  into place; its name is unique, so two writers (processes, sweeps, hosts on
  a shared file system) never touch each other's files. The parts are the
  truth: every reader builds its table from all of them.
- ``records.parquet`` and ``records.csv``: views for people and notebooks,
  rebuilt from every part after each write while holding an exclusive
  ``fcntl.flock`` on ``.records.lock`` (on NFS, Linux maps flock onto NFS
  byte-range locks; where no lock can be taken the parts are still written
  and the views are left as they were, with a note). A view may lag behind a
  part; a reader never trusts a view over the parts.

Folders written before parts existed (only ``records.parquet`` and/or
``records.csv``) are read as both files together: a row found in either is
kept, so a shorter but readable twin never hides the other's rows. The first
write into such a folder copies those rows into a ``legacy-`` part first.
Nothing is ever renamed, moved aside or deleted; what cannot be read is named
in ``problems`` for the caller to report.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import stat
import time
import uuid
from pathlib import Path

import pandas as pd

ROWS = "rows"
VIEWS = ("records.parquet", "records.csv")
LOCK = ".records.lock"


class RowsNotWritten(OSError):
    """The rows of a case could not be written (full disk, read-only folder...)."""


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


# -- files -------------------------------------------------------------------
def atomic_write(write, path: Path) -> None:
    """``write(tmp)`` then fsync and rename onto ``path``: a reader never sees half
    a file, and no temporary file is left behind whatever happens (a signal too)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def regular_file(path: Path) -> bool:
    """True for a regular file; False for a FIFO, a device, a socket or a folder
    (reading those could block forever or read forever)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_table_file(path: Path) -> pd.DataFrame:
    """A .parquet or .csv table; in a CSV only empty cells are missing (a string
    such as "NA" stays). ValueError for anything that is not a regular file."""
    path = Path(path)
    if not regular_file(path):
        kind = "a folder" if path.is_dir() else "not a regular file (a FIFO, a device or a socket?)"
        raise ValueError(f"{path} is {kind}; a table is a .parquet or .csv file")
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    return pd.read_csv(path, keep_default_na=False, na_values=[""], low_memory=False)


def _part_name() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]+", "_", socket.gethostname())[:40] or "host"
    ns = time.time_ns()  # sorts the parts of one writer in the order written
    stamp = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ns // 10**9))}.{ns % 10**9:09d}Z"
    return f"{stamp}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"


# -- locking -------------------------------------------------------------------
@contextlib.contextmanager
def folder_lock(directory: Path, name: str = LOCK, blocking: bool = True):
    """An exclusive ``fcntl.flock`` on ``directory/name`` for the block. Yields
    True when held, False when this file system cannot lock (the caller decides
    what to skip). With ``blocking=False`` a held lock raises BlockingIOError."""
    fd = os.open(Path(directory) / name, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            held = True
        except BlockingIOError:
            raise
        except OSError:  # ENOLCK / EOPNOTSUPP: no locks on this file system
            held = False
        yield held
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# -- writing -----------------------------------------------------------------
def write_rows(df: pd.DataFrame, directory: str | Path, order=None) -> tuple[Path, str]:
    """Add the rows of ``df`` to ``directory`` as a new part; then rebuild the
    views. Returns (the part, a note when the views could not be rebuilt).
    RowsNotWritten when the part cannot be written (nothing half-written stays)."""
    directory = Path(directory)
    try:
        (directory / ROWS).mkdir(parents=True, exist_ok=True)
        _adopt_legacy(directory)
        part = directory / ROWS / _part_name()
        atomic_write(lambda p: df.to_parquet(p, index=False), part)
    except OSError as e:
        raise RowsNotWritten(e.errno, f"could not write rows to {directory}: {e.strerror or e}") from None
    return part, rebuild_views(directory, order)


def _adopt_legacy(directory: Path) -> None:
    """A folder from before parts: copy its rows (both twins) into a ``legacy-`` part, once."""
    if not any((directory / v).exists() for v in VIEWS):
        return
    with folder_lock(directory):
        parts = directory / ROWS
        if any(p.name.startswith("legacy-") for p in parts.iterdir()) or any(
                p.suffix == ".parquet" for p in parts.iterdir()):
            return  # adopted already, or the views are ours (rebuilt from parts)
        old = read_legacy(directory, [])
        if not old.empty:
            atomic_write(lambda p: old.to_parquet(p, index=False), parts / f"legacy-{_part_name()}")


def rebuild_views(directory: Path, order=None) -> str:
    """records.parquet/.csv from every part, under the folder lock; a note when not possible."""
    try:
        with folder_lock(directory) as held:
            if not held:
                return f"{directory} cannot be locked here: records.parquet/.csv not updated (the rows are in {ROWS}/)"
            df = read_parts(directory, [])
            if order is not None:
                df = order(df)
            atomic_write(lambda p: df.to_parquet(p, index=False), directory / VIEWS[0])
            atomic_write(lambda p: df.to_csv(p, index=False), directory / VIEWS[1])
    except OSError as e:
        return f"records.parquet/.csv in {directory} not updated ({e.strerror or e}); the rows are in {ROWS}/"
    return ""


# -- reading -------------------------------------------------------------------
def read_parts(directory: Path, problems: list[str]) -> pd.DataFrame:
    """Every part of a folder, oldest first; unreadable parts are named in ``problems``."""
    frames = []
    for part in sorted((Path(directory) / ROWS).glob("*.parquet")):
        try:
            frames.append(read_table_file(part))
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: say so, keep the others
            problems.append(f"{part}: {first_line(e)}")
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_legacy(directory: Path, problems: list[str]) -> pd.DataFrame:
    """records.parquet and records.csv of an old folder together: a row in either is kept."""
    frames = []
    for name in VIEWS:
        path = Path(directory) / name
        if not path.exists():
            continue
        try:
            frames.append(read_table_file(path))
        except Exception as e:  # noqa: BLE001
            problems.append(f"{path}: {first_line(e)}")
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame()
    if len(frames) == 1:
        return frames[0]
    both = pd.concat(frames, ignore_index=True)
    return both[~_row_signature(both).duplicated()].reset_index(drop=True)


def _row_signature(df: pd.DataFrame) -> pd.Series:
    """A row's identity across a parquet and its CSV twin (types differ between them)."""
    if "row_id" in df and df["row_id"].notna().all():
        return df["row_id"].astype(str)
    cols = [c for c in ("timestamp", "attention", "variant", "workload", "resolution", "batch_size", "dtype",
                        "direction", "status", "seed", "threads") if c in df]

    def norm(v):
        if isinstance(v, float) and v != v:
            return ""
        if isinstance(v, (int, float)) and float(v).is_integer():
            return str(int(v))
        return str(v)

    return df[cols].apply(lambda r: "|".join(norm(v) for v in r), axis=1)


def read_folder(directory: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """The rows of one job folder: its parts, or (a folder from before parts) both legacy tables."""
    problems = problems if problems is not None else []
    directory = Path(directory)
    if (directory / ROWS).is_dir() and any((directory / ROWS).glob("*.parquet")):
        return read_parts(directory, problems)
    return read_legacy(directory, problems)


def job_folders(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) that hold rows."""
    root = Path(root)
    found = {p.parent.parent for p in root.rglob(f"{ROWS}/*.parquet")}
    found |= {p.parent for name in VIEWS for p in root.rglob(name) if p.parent.name != ROWS}
    return sorted(found)


def read_tree(root: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """Every job folder's rows under ``root``, with a ``job_dir`` column; what could
    not be read is named in ``problems`` (its readable twin's rows are kept)."""
    problems = problems if problems is not None else []
    frames = []
    for folder in job_folders(Path(root)):
        before = len(problems)
        df = read_folder(folder, problems)
        if not df.empty:
            frames.append(df.assign(job_dir=str(folder)))
        elif len(problems) == before:
            problems.append(f"{folder}: its table holds no rows")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
