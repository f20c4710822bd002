"""Rows: one flat record per case (units in the column names) and every rule
about rows: the core columns and the ones a workload declares, invalid and
failed rows, the case key, reading and writing.

A row is written as soon as it exists (``storage.py``: one immutable part per
write), so a crash later never loses it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
import os
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import storage
from .config import Job, attention_options
from .storage import RowsNotWritten, atomic_write  # noqa: F401  (re-exported: the row API in one place)

STATUSES = ("ok", "oom", "unsupported", "unavailable", "invalid", "skipped", "error", "interrupted",
            "cancelled", "timeout", "preempted")  # the last three: a Slurm job that ended without its row

NAN = math.nan


@dataclass(frozen=True)
class Core:
    """The columns every row has (units in the names). A workload adds its own
    (``Workload.columns``); a row may hold nothing else (``Record.checked``)."""

    # what was measured: the case (``case`` is its identity, one JSON; the other columns spell it out)
    attention: str = ""  # registered name
    variant: str = ""  # the attention as tables label it: preset name [+ options set on the command line]
    workload: str = ""
    resolution: str = ""  # "224" (square) or "512x2048" (height x width, pixels)
    height: int = 0
    width: int = 0
    patch_size: int = 0
    grid_h: int = 0  # token grid of the attention (a model: of its first stage)
    grid_w: int = 0
    tokens: int = 0
    batch_size: int = 0
    dim: int = 0  # channels and heads of the attention (a model: its first stage's)
    heads: int = 0
    dtype: str = ""  # precision as run: fp32, fp16, bf16, amp
    device: str = ""  # cpu, cuda
    device_name: str = ""
    attention_options: str = ""  # JSON of the attention's options
    direction: str = "fwd"  # fwd, bwd (the backward alone) or fwd_bwd
    timing: str = "eager"  # eager, cuda_graph or kernels
    seed: int = 0
    case: str = ""  # JSON of every setting that changes what is measured (suite/job.py case_identity)
    # outcome
    status: str = ""  # one of STATUSES
    reason: str = ""
    impl_ran: str = ""  # the kernel or code path that actually ran (e.g. triton, reference, sdpa:cudnn)
    # timing
    latency_ms_p10: float = NAN
    latency_ms_p50: float = NAN
    latency_ms_p90: float = NAN
    repeats: int = 0
    throughput_per_s: float = NAN  # images (batch items) per second at p50
    # how it was timed, and whether to believe it (suite/conditions.py)
    timing_quality: str = ""  # ok, noisy, contended, throttled
    timing_note: str = ""  # why, and which attempt was kept
    timing_attempts: int = 0
    threads: int = 0  # torch CPU threads
    cpu_affinity: int = 0  # CPUs this process may run on
    load_avg_before: float = NAN  # 1-minute load average
    load_avg_after: float = NAN
    other_cpu_load: float = NAN  # CPU cores other processes used on average around the timed loop
    timed_wall_s: float = NAN  # wall time of the timed loop
    timed_cpu_s: float = NAN  # CPU time of this process in the timed loop, all threads
    # memory
    peak_mem_mib: float = NAN
    peak_extra_mem_mib: float = NAN  # peak minus what was allocated before the call
    mem_method: str = ""
    saved_mib: float = NAN  # tensors the forward keeps for the backward
    # work
    flops_analytic: float = NAN
    flops_counted: float = NAN
    tflops_per_s: float = NAN  # from flops_analytic and latency_ms_p50
    sdpa_kernels: str = ""  # SDPA kernels that actually ran (aten ops seen)
    run_info: str = ""  # JSON of facts the attention reported
    # GPU readings (NVML; the device found by UUID), empty on CPU
    gpu_sm_clock_mhz: float = NAN  # at the end of the timed loop
    gpu_mem_clock_mhz: float = NAN
    gpu_sm_clock_mhz_start: float = NAN  # at its start
    gpu_mem_clock_mhz_start: float = NAN
    gpu_sm_clock_mhz_min: float = NAN  # lowest seen while it ran
    gpu_throttle_reasons: str = ""  # NVML clock-event reasons seen while it ran
    gpu_other_processes: float = NAN  # other compute processes on the GPU
    gpu_power_limit_w: float = NAN
    gpu_temp_c: float = NAN  # highest seen while it ran
    energy_j: float = NAN  # of the timed calls alone: the loop less as many L2 scrubs
    avg_power_w: float = NAN  # energy_j over the calls' summed device time
    driver_version: str = ""
    # where and with what it ran
    torch_version: str = ""
    cuda_version: str = ""
    cudnn_version: str = ""
    python_version: str = ""
    cpu_model: str = ""
    hostname: str = ""
    slurm_job: str = ""  # a Slurm job: <array job>_<task> (what sacct and scancel take), or the job id
    slurm_nodelist: str = ""
    slurm_partition: str = ""
    slurm_cpus: int = 0  # CPUs Slurm allocated to the task
    slurm_gpus: int = 0  # GPUs Slurm allocated on the node
    cpu_binding: str = ""  # ok / loose (the affinity allows more CPUs than allocated) / "" outside Slurm
    git_sha: str = ""
    timestamp: str = ""
    config: str = ""  # the full resolved config, as YAML
    row_id: str = ""  # unique per row: tells a row from its copy in another table
    extra_columns: str = ""  # JSON of values a workload returned under names it did not declare


@dataclass(frozen=True)
class Col:
    """A column a workload adds to its rows: name, default (its type), what it means."""

    name: str
    default: object = NAN
    doc: str = ""


CORE: tuple[Col, ...] = tuple(Col(f.name, f.default) for f in dataclasses.fields(Core))
_CORE_NAMES = frozenset(c.name for c in CORE)


class Record(dict):
    """One row: the core columns (defaults filled in) plus a workload's own.
    Attribute access reads a column (``r.status``); a column the row lacks reads as
    its declared default when known, else NaN."""

    def __init__(self, **values):
        super().__init__({c.name: c.default for c in CORE})
        self.update(values)
        if self["status"] not in STATUSES:
            raise ValueError(f"status {self['status']!r} not in {STATUSES}")

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return self.get(name, NAN)

    def row(self) -> dict:
        return dict(self)

    def checked(self, columns: tuple[Col, ...], owner: str) -> tuple["Record", str]:
        """The row with only core and ``columns`` (defaults filled in); values under other
        names move into ``extra_columns`` (JSON) and the note says so. Never raises."""
        known = _CORE_NAMES | {c.name for c in columns}
        extra = {k: v for k, v in self.items() if k not in known}
        out = Record(**({c.name: c.default for c in columns} | {k: v for k, v in self.items() if k in known}))
        if not extra:
            return out, ""
        out["extra_columns"] = json.dumps(extra, sort_keys=True, default=str)
        return out, f"columns not declared by {owner}: {', '.join(sorted(extra))} (kept in extra_columns)"


def record_fields() -> list[str]:
    return [c.name for c in CORE]


@functools.cache
def record_defaults() -> dict:
    return {c.name: c.default for c in CORE}


# -- making rows ---------------------------------------------------------------
def base_fields(job: Job, facts: dict, device: torch.device, dtype_name: str, env: dict, case: str) -> dict:
    """The identifying columns of a row: the settings, the workload's ``facts``
    (its grid, width, heads, patch...) over them, the environment, and ``case``."""
    cfg = job.cfg
    h, w = facts.get("size") or _size(cfg.resolution)
    grid = facts.get("grid", (0, 0))
    fields = dict(
        attention=str(cfg.attention.get("name")),
        variant=job.label,
        workload=str(_get(cfg.workload, "name")),
        direction=cfg.direction,
        timing=cfg.timing,
        resolution=str(h) if h == w else f"{h}x{w}",
        height=h,
        width=w,
        grid_h=grid[0],
        grid_w=grid[1],
        tokens=grid[0] * grid[1],
        batch_size=cfg.batch_size,
        dtype=dtype_name,
        device=device.type,
        device_name=str(env.get("device_name", "")),
        attention_options=json.dumps(attention_options(cfg), sort_keys=True, default=str),
        seed=cfg.seed,
        case=case,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        row_id=uuid.uuid4().hex,
        config=job.config_yaml,
    )
    fields.update({k: v for k, v in env.items() if k in _CORE_NAMES and k != "device_name"})
    return fields | {k: v for k, v in facts.items() if k not in ("grid", "size")}


def _get(node, key, default=""):
    return node.get(key, default) if isinstance(node, dict) else getattr(node, key, default)


def _size(resolution) -> tuple[int, int]:
    from .config import BadInput, parse_resolution

    try:
        return parse_resolution(resolution)
    except BadInput:
        return 0, 0


def flagged(quality) -> bool:
    """A timing verdict the suite does not vouch for: noisy, contended or throttled ("" or missing: not timed)."""
    return isinstance(quality, str) and quality not in ("", "ok")


def flagged_mask(df: pd.DataFrame) -> pd.Series:
    """Which rows of a table carry a flagged timing."""
    return df["timing_quality"].map(flagged) if "timing_quality" in df else pd.Series(False, index=df.index)


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def failure(e: BaseException, run_dir: Path) -> tuple[str, str]:
    """(status, reason) of an exception raised while running a case. An
    unexpected error keeps its traceback in ``run_dir/error.log``."""
    import attentions

    from .measure import CaseUnsupported

    kind = "unsupported" if isinstance(e, CaseUnsupported) else attentions.failure_kind(e)
    if kind:
        return kind, str(e)
    if is_oom(e):
        return "oom", first_line(e)
    log = Path(run_dir) / "error.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("".join(traceback.format_exception(e)))
        where = f" (traceback in {log})"
    except OSError:
        where = " (traceback not saved: the run folder is not writable)"
    return "error", first_line(e) + where


def unmeasured_row(job: Job, status: str, reason: str, case: str = "") -> Record:
    """A row for a job that never reached measuring (bad settings, or a failure
    before the workload could describe its case): the settings as given."""
    from .device import environment, resolve_device, resolve_precision

    cfg = job.cfg
    device, dtype, env = torch.device("cpu"), str(cfg.precision.name), {}
    try:  # say where the case would have run, so the row groups with its sweep's device
        device = resolve_device(cfg.device.name)
        dtype = resolve_precision(cfg.precision.name, device).name
        env = environment(device)
    except Exception:  # noqa: BLE001 - e.g. device=cuda without a GPU: keep the settings as given
        pass
    base = base_fields(job, {}, device, dtype, env, case)
    if not env:
        base["device"] = str(cfg.device.name)
    return Record(**base, status=status, reason=reason)


# -- the case key ------------------------------------------------------------------
# Tables from before the ``case`` column: the columns that spelt a case then.
LEGACY_KEY = ("attention", "attention_options", "workload", "resolution", "patch_size", "batch_size", "dim",
              "heads", "dtype", "device", "model", "proxy_task", "proxy_steps", "direction", "timing", "seed",
              "threads")
ATTENTION_KEYS = ("attention",)  # what a baseline comparison leaves out of the case


def case_key(row: dict | pd.Series, drop: tuple[str, ...] = ()) -> str:
    """The row's case (its ``case`` JSON), less the identity keys ``drop``; rows from
    before that column get a key from the columns that spelt a case then."""
    case = row.get("case", "")
    if isinstance(case, str) and case:
        if not drop:
            return case
        ident = json.loads(case)
        return json.dumps({k: v for k, v in ident.items() if k not in drop}, sort_keys=True, separators=(",", ":"))
    skip = {"attention", "attention_options"} if "attention" in drop else set()
    return "legacy:" + "|".join(key_of(row, [c for c in LEGACY_KEY if c not in skip]))


def key_of(row: dict | pd.Series, columns) -> tuple:
    """``row``'s values in ``columns`` as strings, one spelling per value (a missing column reads as its default)."""
    defaults = record_defaults()
    return tuple(_norm(row.get(c, defaults.get(c, ""))) for c in columns)


def _norm(value) -> str:
    """One spelling per value: 224, 224.0 and np.int64(224) all read "224"; NaN reads ""."""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# -- reading and writing (the discipline lives in storage.py) -------------------
def read_table_file(path: Path) -> pd.DataFrame:
    return storage.read_table_file(path)


def ordered_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``Record``'s fields first, in their order, then any other columns."""
    fields = record_fields()
    return df[[c for c in fields if c in df.columns] + [c for c in df.columns if c not in fields]]


def read_folder(directory: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """The rows in one job folder (``storage.read_folder``)."""
    return storage.read_folder(directory, problems)


def write_records(records: list[Record], directory: str | Path) -> str:
    """Add ``records`` to ``directory`` as one immutable part, then rebuild
    records.parquet/.csv (``storage.write_rows``). Returns a note when the
    views could not be rebuilt (the rows are safe). RowsNotWritten when the
    folder cannot take them."""
    names = list(dict.fromkeys([*record_fields(), *(k for r in records for k in r)]))
    df = pd.DataFrame([r.row() for r in records], columns=names)
    _, note = storage.write_rows(df, directory, ordered_columns)
    return note


def check_writable(directory: str | Path) -> None:
    """RowsNotWritten unless ``directory`` can be created and written (checked before measuring)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise RowsNotWritten(e.errno, f"{directory} is not writable ({e.strerror or e}); nothing was measured") from None


def read_job_records(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """Every job folder's rows under ``root`` (``storage.read_tree``); what could
    not be read is named in ``problems``."""
    return storage.read_tree(root, problems)
