"""Reading a results table for ``suite.report`` and ``suite.compare``: every
bad table or argument becomes one ``BadInput`` line that names the file or
column and says what is valid, never a traceback, never a hang.

Only ``read_rows`` knows how ``suite.collect`` reads tables and folders; if
collect's loader changes, re-point that one function.
"""
from __future__ import annotations

import dataclasses
import math
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd

from .records import STATUSES, Core, first_line

MAKE = "make one with python -m suite.collect <sweep folder>"
NUMERIC = tuple(f.name for f in dataclasses.fields(Core) if f.type in ("int", "float"))
TEXT = tuple(f.name for f in dataclasses.fields(Core) if f.type == "str")
DERIVED_NUMERIC = ("speedup_vs_vanilla", "speedup_vs_flash", "peak_tflops", "peak_gbps", "arith_intensity",
                   "roofline_tflops", "frac_of_peak", "frac_of_roofline")
LATENCIES = ("latency_ms_p10", "latency_ms_p50", "latency_ms_p90")
# Columns a tool cannot do without (besides a name: variant or attention); every other
# Record column that is missing reads as Record's default.
REPORT_NEEDS = ("status", "resolution", "dtype", "workload", "device_name", "latency_ms_p50")
COMPARE_NEEDS = ("status", *LATENCIES)
UNVOUCHED = ("timing_quality", "timing_note")  # absent: the table records no measuring conditions; keep it so


class BadInput(ValueError):
    """A table or argument a tool cannot use; its message is one line."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: Path) -> None:
    """BadInput unless ``path`` is a regular file: a FIFO or a device is never opened (reading one can block)."""
    mode = path.stat().st_mode
    if not stat.S_ISREG(mode):
        raise BadInput(f"{path} is {_kind(mode)}, not a table: give a .parquet or .csv file, or a folder of them")


def _table_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(results.parquet files, job record files) below ``folder``; BadInput if one is not a regular file."""
    tables = sorted(folder.rglob("results.parquet"))
    records = sorted(f for pattern in ("records.parquet", "records.csv") for f in folder.rglob(pattern))
    for f in tables or records:
        regular_file(f)
    return tables, records


def read_rows(path: str | Path, problems: list[str]) -> pd.DataFrame:
    """The rows at ``path`` as collect reads them (a table file, a folder of results.parquet
    files, or a sweep folder of job records), derived columns as stored. Files that could
    not be read go to ``problems``; BadInput when nothing readable remains."""
    from . import collect

    p = Path(path)
    if not p.exists():
        raise BadInput(f"{p}: no such file or folder; give a results table (.parquet or .csv) or a sweep folder; "
                       f"{MAKE}")
    if p.is_dir():
        tables, records = _table_files(p)
        if not tables and not records:
            raise BadInput(f"{p}: no results.parquet and no job records (records.parquet/.csv) below it")
    else:
        regular_file(p)
    try:
        if p.is_dir():
            return collect.load(tables, problems) if tables else collect.load([p], problems)
        return collect.read_table(p, problems)
    except Exception as e:  # noqa: BLE001 - collect's loader is being rewritten: whatever it raises is one line
        unread = f" (could not read: {'; '.join(problems)})" if problems else ""
        raise BadInput(f"{p}: {first_line(e)}{unread}") from None


def checked(df: pd.DataFrame, source: str, needs: tuple[str, ...]) -> pd.DataFrame:
    """``df`` with its columns checked (BadInput names the first problem) and the missing
    Record columns filled with their defaults."""
    if df.empty:
        raise BadInput(f"{source}: the table has no rows; {MAKE}")
    missing = [c for c in needs if c not in df.columns]
    if "variant" not in df.columns and "attention" not in df.columns:
        missing.insert(0, "variant (or attention)")
    if missing:
        raise BadInput(f"{source}: no column {', '.join(missing)}; a results table needs the columns "
                       f"{', '.join(needs)} and variant or attention; {MAKE}")
    df = df.copy()
    for col in [c for c in NUMERIC + DERIVED_NUMERIC if c in df.columns]:
        df[col] = _numbers(df[col], source, col)
    for col in [c for c in TEXT if c in df.columns]:  # a missing name reads "", never a NaN that groupby drops
        df[col] = df[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    if "resolution" in df.columns:
        _resolutions(df["resolution"], source)
    bad = sorted(set(df["status"].astype(str)) - set(STATUSES))
    if bad:
        raise BadInput(f"{source}: column status holds {bad[0]!r}; valid: {', '.join(STATUSES)}")
    ok = df["status"] == "ok"
    for col in [c for c in LATENCIES + DERIVED_NUMERIC[:2] if c in df.columns]:
        _positive(df.loc[ok, col], source, col, required=col in needs)
    return _defaults(df)


def _resolutions(col: pd.Series, source: str) -> None:
    """Every resolution reads as pixels: 224 (square) or 512x2048."""
    from .figure_style import resolution_side

    sides = col.map(resolution_side)
    wrong = ~(sides > 0)
    if wrong.any():
        raise BadInput(f"{source}: column resolution holds {str(col[wrong].iloc[0])!r} in {int(wrong.sum())} "
                       f"row(s); valid: pixels, e.g. 224 or 512x2048")


def _numbers(col: pd.Series, source: str, name: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return col.astype(float) if pd.api.types.is_bool_dtype(col) else col
    text = col.map(lambda v: v if not isinstance(v, str) or v.strip() else math.nan)
    out = pd.to_numeric(text, errors="coerce")
    wrong = out.isna() & text.notna()
    if wrong.any():
        raise BadInput(f"{source}: column {name} holds {str(text[wrong].iloc[0])!r} in {int(wrong.sum())} row(s); "
                       f"valid: numbers")
    return out


def _positive(values: pd.Series, source: str, name: str, required: bool, unit: str = "",
              rows: str = " with status ok") -> None:
    """Every ok row's latency (or stored speedup) is positive and finite; missing only where not required."""
    v = values.astype(float)
    bad = v[(v <= 0) | np.isinf(v) | (v.isna() & required)]
    if len(bad):
        unit = unit or ("x" if name.startswith("speedup") else "milliseconds")
        raise BadInput(f"{source}: column {name} is {bad.iloc[0]} in {len(bad)} row(s){rows}; "
                       f"valid: a positive number ({unit})")


def _defaults(df: pd.DataFrame) -> pd.DataFrame:
    """The Record columns a table lacks, as Record's defaults ("" or NaN where a field has none)."""
    fill = {}
    for f in dataclasses.fields(Core):
        if f.name in df.columns or f.name in UNVOUCHED:
            continue
        if f.default is not dataclasses.MISSING:
            fill[f.name] = f.default
        else:
            fill[f.name] = math.nan if f.type in ("int", "float") else ""
    return df.assign(**fill) if fill else df


def out_folder(path: str | Path) -> Path:
    """``path`` as a folder to write into (created); BadInput when it is a file or cannot be made or written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInput(f"--out {p} is a file; give a folder (it is created if missing)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(f"--out {p}: cannot create the folder ({e.strerror or e}); give a writable folder") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise BadInput(f"--out {p}: the folder is not writable; give a writable folder")
    return p
