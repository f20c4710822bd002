"""The table a job prints: the workload's summary columns, one row per record,
then each row's reason and where the files are. Fits an 80-column terminal."""
from __future__ import annotations

import math

from .config import Job
from .records import Record, flagged
from .workloads import get_workload


def spread(record: Record) -> float:
    """(p90 - p10) / p50 of the timed calls, in percent."""
    return 100 * (record.latency_ms_p90 - record.latency_ms_p10) / record.latency_ms_p50


def cell(record: Record, field: str, fmt: str) -> str:
    """One summary cell: a Record field, ``spread`` (the p10-p90 spread in % of p50),
    or ``outcome`` (the status, and the timing verdict when it is not ok)."""
    if field == "outcome":
        q = record.timing_quality
        return record.status + (f"/{q}" if flagged(q) else "")
    value = spread(record) if field == "spread" else getattr(record, field, None)
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, fmt) if fmt else str(value)


def print_summary(records: list[Record], job: Job) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    wl = get_workload(job.cfg.workload.name)
    r0 = records[0]
    console = Console()
    table = Table(title=f"{r0.device_name} ({r0.device}), torch {r0.torch_version}, {r0.dtype}, batch {r0.batch_size}",
                  title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False)
    for i, c in enumerate(wl.summary):  # the first column (a label) folds; numbers never wrap
        table.add_column(c.header, justify="left" if c.fmt == "" else "right", overflow="fold", no_wrap=i > 0)
    for r in records:
        table.add_row(*(Text(cell(r, c.field, c.fmt)) for c in wl.summary))  # Text: no markup ("[...]" is data)
    console.print(table)
    for r in records:
        if r.reason:
            console.print(f"[{r.status}] {r.reason}", markup=False, highlight=False)
        if flagged(r.timing_quality):
            console.print(f"[timing {r.timing_quality}] {r.timing_note}", markup=False, highlight=False)
    console.print(f"records: {job.run_dir / 'records.parquet'} (and records.csv)", markup=False, highlight=False,
                  soft_wrap=True)
