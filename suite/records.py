"""Rows: the one flat record per case (units in the field names), and every
rule about rows: their identifying columns, invalid and failed rows, the
case key, reading and writing.

Every job writes its rows as ``records.parquet`` and ``records.csv`` in its run
directory as soon as they exist, so a crash later never loses them.
"""
from __future__ import annotations

import dataclasses
import functools
import datetime as dt
import json
import math
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from .config import Job, attention_options

STATUSES = ("ok", "oom", "unsupported", "unavailable", "invalid", "skipped", "error", "interrupted",
            "cancelled", "timeout", "preempted")  # the last three: a Slurm job that ended without its row

NAN = math.nan


@dataclass(frozen=True)
class Record:
    # what was measured
    attention: str  # registered name
    variant: str  # the attention as tables label it: preset name [+ options set on the command line]
    workload: str
    resolution: int
    patch_size: int
    grid_h: int
    grid_w: int
    tokens: int
    batch_size: int
    dim: int
    heads: int
    dtype: str  # precision as run: fp32, fp16, bf16, amp
    device: str  # cpu, cuda
    device_name: str
    attention_options: str  # JSON of the attention's options
    # outcome
    status: str  # one of STATUSES
    reason: str = ""
    # timing
    latency_ms_p10: float = NAN
    latency_ms_p50: float = NAN
    latency_ms_p90: float = NAN
    repeats: int = 0
    throughput_per_s: float = NAN  # images (batch items) per second at p50
    timing: str = "eager"  # eager, cuda_graph or kernels
    direction: str = "fwd"  # fwd, bwd (the backward alone) or fwd_bwd
    # how it was timed, and whether to believe it (suite/conditions.py)
    timing_quality: str = ""  # ok, noisy, contended, throttled
    timing_note: str = ""  # why, and which attempt was kept
    timing_attempts: int = 0
    threads: int = 0  # torch CPU threads
    cpu_affinity: int = 0  # CPUs this process may run on
    load_avg_before: float = NAN  # 1-minute load average
    load_avg_after: float = NAN
    other_cpu_load: float = NAN  # CPU cores other processes used on average during the timed loop
    timed_wall_s: float = NAN  # wall time of the timed loop
    timed_cpu_s: float = NAN  # CPU time of this process in the timed loop, all threads
    # memory
    peak_mem_mib: float = NAN
    peak_extra_mem_mib: float = NAN  # peak minus what was allocated before the call
    mem_method: str = ""
    # work
    flops_analytic: float = NAN
    flops_counted: float = NAN
    tflops_per_s: float = NAN  # from flops_analytic and latency_ms_p50
    sdpa_kernels: str = ""  # SDPA kernels that actually ran (aten ops seen)
    run_info: str = ""  # JSON of facts the attention reported
    # accuracy proxies
    rel_err_vs_exact: float = NAN
    rel_err_vs_fp64: float = NAN
    cos_sim_vs_exact: float = NAN
    grad_rel_err_vs_fp64: float = NAN  # direction bwd / fwd_bwd: the largest over the gradients (grad_errors)
    grad_rel_err_vs_exact: float = NAN  # exact attentions: against float64 exact attention's gradients
    grad_errors: str = ""  # JSON: each gradient's relative errors
    saved_mib: float = NAN  # tensors the forward keeps for the backward
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
    # environment
    torch_version: str = ""
    cuda_version: str = ""
    cudnn_version: str = ""
    python_version: str = ""
    cpu_model: str = ""
    hostname: str = ""
    git_sha: str = ""
    timestamp: str = ""
    seed: int = 0
    config: str = ""  # the full resolved config, as YAML
    # workload=model / workload=train_proxy (suite/workloads/); empty otherwise.
    # There dim/heads/patch_size/grid/tokens are the model's stage-1 values.
    model: str = ""
    model_weights: str = ""  # the state dict loaded (model.weights); empty: random init
    params: int = 0
    stage_attentions: str = ""  # attention per stage, "|"-joined
    model_info: str = ""  # JSON: per-stage dim/heads/grid/options, position embedding, fallbacks
    flops_per_image_analytic: float = NAN  # FLOPs (2 per multiply-add); the papers' "GFLOPs" are MACs: /2
    flops_per_image_counted: float = NAN
    attn_flops_per_image_analytic: float = NAN  # the attention layers' part (qkv, core, LePE, proj)
    latency_ms_p50_attn_identity: float = NAN  # attention layers -> identity on (B, N, C)
    attn_latency_share: float = NAN  # 1 - that / latency_ms_p50
    attn_core_latency_share: float = NAN  # attention core -> v (qkv, proj kept)
    fidelity_images: int = 0
    fidelity_feat_rel_err: float = NAN  # vs the same weights with exact attention everywhere
    fidelity_feat_cos: float = NAN
    fidelity_top1_agree: float = NAN  # random 1000-class head
    fidelity_layer_rel_err_mean: float = NAN  # each layer vs exact attention on its own input
    fidelity_layer_rel_err_max: float = NAN
    fidelity_layer_cos_min: float = NAN
    fidelity_layers: str = ""  # JSON list of {stage, block, rel_err, cos}
    proxy_task: str = ""  # pathfinder, listops
    proxy_steps: int = 0
    proxy_top1: float = NAN  # held-out split
    proxy_train_loss: float = NAN  # mean over the last 10% of steps
    proxy_steps_per_s: float = NAN
    proxy_wall_s: float = NAN  # the whole job: data, training, evaluation
    proxy_eval_items: int = 0

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not in {STATUSES}")

    def row(self) -> dict:
        return dataclasses.asdict(self)


def record_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Record)]


@functools.cache
def record_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(Record)}


# -- making rows ---------------------------------------------------------------
def base_fields(job: Job, identity: dict, device: torch.device, dtype_name: str, env: dict) -> dict:
    """The identifying columns of a row. ``identity`` holds the workload's own
    grid, width and model facts over the top-level settings."""
    cfg = job.cfg
    hw = identity.get("grid", (0, 0))
    fields = dict(
        attention=str(cfg.attention.get("name")),
        variant=job.label,
        workload=cfg.workload.name,
        direction=cfg.direction,
        timing=cfg.timing,
        resolution=cfg.resolution,
        patch_size=cfg.patch_size,
        grid_h=hw[0],
        grid_w=hw[1],
        tokens=hw[0] * hw[1],
        batch_size=cfg.batch_size,
        dim=cfg.dim,
        heads=cfg.heads,
        dtype=dtype_name,
        device=device.type,
        device_name=str(env.get("device_name", "")),
        attention_options=json.dumps(attention_options(cfg), sort_keys=True),
        seed=cfg.seed,
        timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        config=job.config_yaml,
    )
    fields.update({k: v for k, v in env.items() if k in Record.__dataclass_fields__ and k != "device_name"})
    return fields | {k: v for k, v in identity.items() if k != "grid"}


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
    from attentions import Unavailable, Unsupported

    if isinstance(e, Unavailable):
        return "unavailable", str(e)
    if isinstance(e, Unsupported):
        return "unsupported", str(e)
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


def unmeasured_row(job: Job, status: str, reason: str) -> Record:
    """A row for a job that never reached measuring (bad settings, or a failure
    before the workload could describe its case): the settings as given."""
    from .device import environment, resolve_device, resolve_precision

    cfg = job.cfg
    g = cfg.resolution // cfg.patch_size if cfg.patch_size > 0 else 0
    device, dtype, env = torch.device("cpu"), str(cfg.precision.name), {}
    try:  # say where the case would have run, so the row groups with its sweep's device
        device = resolve_device(cfg.device.name)
        dtype = resolve_precision(cfg.precision.name, device).name
        env = environment(device)
    except Exception:  # noqa: BLE001 - e.g. device=cuda without a GPU: keep the settings as given
        pass
    base = base_fields(job, {"grid": (g, g)}, device, dtype, env)
    if not env:
        base["device"] = str(cfg.device.name)
    return Record(**base, status=status, reason=reason)


# -- the case key ------------------------------------------------------------------
CASE_KEY = ("attention", "attention_options", "workload", "resolution", "patch_size", "batch_size",
            "dim", "heads", "dtype", "device", "device_name")
OPTIONAL_KEY = ("model", "proxy_task", "proxy_steps", "direction", "timing")


def case_key(row: dict | pd.Series, columns) -> tuple:
    """The row's case as a tuple of strings (a missing column reads as Record's default)."""
    return key_of(row, list(CASE_KEY) + [c for c in OPTIONAL_KEY if c in columns])


def key_of(row: dict | pd.Series, columns) -> tuple:
    """``row``'s values in ``columns`` as strings, one spelling per value (a missing column reads as Record's default)."""
    defaults = record_defaults()
    return tuple(_norm(row.get(c, defaults.get(c, ""))) for c in columns)


def _norm(value) -> str:
    """One spelling per value: 224, 224.0 and np.int64(224) all read "224"; NaN reads ""."""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# -- reading and writing ---------------------------------------------------------
class RowsNotWritten(OSError):
    """The rows of a case could not be written (full disk, read-only folder...)."""


def atomic_write(write, path: Path) -> None:
    """``write(tmp)`` then rename over ``path``: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_table_file(path: Path) -> pd.DataFrame:
    """A .parquet or .csv table; in a CSV only empty cells are missing (a string such as "NA" stays)."""
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False,
                                                                                na_values=[""])


def ordered_columns(df: pd.DataFrame) -> pd.DataFrame:
    """``Record``'s fields first, in their order, then any other columns."""
    fields = record_fields()
    return df[[c for c in fields if c in df.columns] + [c for c in df.columns if c not in fields]]


def read_folder(directory: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """The rows in one job folder: records.parquet, else records.csv. Files that
    cannot be read are named in ``problems``."""
    for path in (Path(directory) / "records.parquet", Path(directory) / "records.csv"):
        if not path.exists():
            continue
        try:
            return read_table_file(path)
        except Exception as e:  # noqa: BLE001 - a truncated or corrupt table: say so, try the other
            if problems is not None:
                problems.append(f"{path}: {first_line(e)}")
    return pd.DataFrame()


def write_records(records: list[Record], directory: str | Path) -> tuple[Path, Path]:
    """Add ``records`` to records.parquet and records.csv in ``directory``,
    atomically; rows already there are kept (a file that cannot be read is
    set aside as ``*.unreadable-<time>``, never deleted). RowsNotWritten when
    the folder cannot take them."""
    directory = Path(directory)
    pq, csv = directory / "records.parquet", directory / "records.csv"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        old = read_folder(directory, problems)
        if problems:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            for path in (pq, csv):
                if path.exists() and any(str(path) in p for p in problems):
                    path.rename(path.with_name(f"{path.name}.unreadable-{stamp}"))
        new = pd.DataFrame([r.row() for r in records], columns=record_fields())
        df = pd.concat([old, new], ignore_index=True) if not old.empty else new
        df = ordered_columns(df)
        atomic_write(lambda p: df.to_parquet(p, index=False), pq)
        atomic_write(lambda p: df.to_csv(p, index=False), csv)
    except OSError as e:
        raise RowsNotWritten(e.errno, f"could not write rows to {directory}: {e.strerror or e}") from None
    return pq, csv


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
    """Every job folder's rows under ``root`` (parquet, else the CSV beside it);
    what could not be read is named in ``problems``."""
    frames = []
    folders = sorted({f.parent for pattern in ("records.parquet", "records.csv") for f in Path(root).rglob(pattern)})
    for folder in folders:
        df = read_folder(folder, problems)
        if not df.empty:
            frames.append(df.assign(job_dir=str(folder)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
