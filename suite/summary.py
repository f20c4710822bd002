"""The table a job prints: the workload's summary columns, one row per record,
then each row's reason and where the files are. Fits an 80-column terminal:
long notes wrap at word boundaries, paths are shown relative to the current
folder (or shortened in the middle)."""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

from .config import Job
from .records import Record, flagged
from .workloads import get_workload

WIDTH = 80


def spread(record: Record) -> float:
    """(p90 - p10) / p50 of the timed calls, in percent."""
    return 100 * (record.latency_ms_p90 - record.latency_ms_p10) / record.latency_ms_p50


def cell(record: Record, field: str, fmt: str) -> str:
    """One summary cell: a column, ``spread`` (the p10-p90 spread in % of p50),
    ``outcome`` (the status, and the timing verdict when it is not ok) or
    ``error_vs_fp64`` (the output's error, or the gradients' for bwd / fwd_bwd)."""
    if field == "outcome":
        q = record.timing_quality
        return str(record.status) + (f"/{q}" if flagged(q) else "")
    if field == "spread":
        value = spread(record)
    elif field == "error_vs_fp64":
        value = record.get("rel_err_vs_fp64" if record.direction == "fwd" else "grad_rel_err_vs_fp64")
    else:
        value = record.get(field)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if fmt else str(value)


def short_path(path: Path, width: int = WIDTH - 10) -> str:
    """``path`` relative to the current folder when inside it, else as given; a
    middle ellipsis when still wider than ``width``."""
    text = str(path)
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            text = rel
    except ValueError:
        pass
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 3] + "\u2026" + text[-(keep - keep // 3):]


def print_summary(records: list[Record], job: Job) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    wl = get_workload(str(records[0].workload))
    r0 = records[0]
    console = Console(width=min(WIDTH, Console().width))
    table = Table(title=f"{r0.device_name} ({r0.device}), torch {r0.torch_version}, {r0.dtype}, batch {r0.batch_size}",
                  title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False)
    for i, c in enumerate(wl.summary):  # the first column (a label) folds; numbers never wrap
        table.add_column(c.header, justify="left" if c.fmt == "" else "right", overflow="fold", no_wrap=i > 0)
    for r in records:
        table.add_row(*(Text(cell(r, c.field, c.fmt)) for c in wl.summary))  # Text: no markup ("[...]" is data)
    console.print(table)
    lines = []
    for r in records:
        if r.reason:
            lines.append(f"[{r.status}] {r.reason}")
        if flagged(r.timing_quality):
            lines.append(f"[timing {r.timing_quality}] {r.timing_note}")
    lines.append(f"records: {short_path(job.run_dir)}/")
    for line in lines:
        print(textwrap.fill(line, WIDTH, subsequent_indent="  ", break_on_hyphens=False), flush=True)
