"""Sweep bookkeeping inside one job: resume, skip-before-launch, failure rows, job counts.

- ``resume=true``: a case that already has an ``ok`` row anywhere under the
  sweep directory (same settings, same device name) is not measured again
  (the job returns that row and writes nothing). Needs a stable sweep directory: the presets set
  ``hydra.sweep.dir=results/sweeps/<preset>``; otherwise pass it yourself.
- A case whose memory estimate (``Attention.memory_estimate``, a lower bound)
  exceeds what the device has becomes a ``skipped`` row and is not measured.
- An exception outside ``measure_case`` in a sweep job becomes an ``error`` row.
"""
from __future__ import annotations

import contextlib
import dataclasses
import traceback
from pathlib import Path

import pandas as pd
import torch

from .failures import first_line
from .records import Record

# What makes two rows the same case. The model workload's and the training
# proxy's columns join the key when the table has them.
CASE_KEY = ("attention", "attention_options", "workload", "resolution", "patch_size", "batch_size",
            "dim", "heads", "dtype", "device", "device_name")
OPTIONAL_KEY = ("model", "proxy_task", "proxy_steps")


def case_key(row: dict | pd.Series, columns) -> tuple:
    """The row's case as a tuple of strings (a missing column reads as Record's default)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Record)}
    cols = list(CASE_KEY) + [c for c in OPTIONAL_KEY if c in columns]
    return tuple(_norm(row.get(c, defaults.get(c, ""))) for c in cols)


def _norm(value) -> str:
    """One spelling per value: 224, 224.0 and np.int64(224) all read "224"; NaN reads ""."""
    if isinstance(value, float) and value != value:
        return ""
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# -- resume ---------------------------------------------------------------
def search_dir(run_dir: Path) -> Path:
    """Where earlier rows of this sweep live: the sweep dir in a multirun, else the run dir."""
    with contextlib.suppress(Exception):  # not under Hydra (tests, library use)
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            return Path(hc.sweep.dir)
    return Path(run_dir)


def read_job_records(root: Path) -> pd.DataFrame:
    """Every job's records.parquet under ``root`` (unreadable files are skipped, not fatal)."""
    frames = []
    for f in sorted(Path(root).rglob("records.parquet")):
        with contextlib.suppress(Exception):  # a half-written file from a killed job
            df = pd.read_parquet(f)
            df["job_dir"] = str(f.parent)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


_VOLATILE = ("resume", "records_dir")  # settings that do not change what is measured


def _same_settings(config_yaml: str) -> str:
    """The job's settings as YAML, less the keys that do not change the measurement."""
    keep = [ln for ln in str(config_yaml).splitlines() if not ln.startswith(tuple(f"{k}:" for k in _VOLATILE))]
    return "\n".join(keep)


def resumed_records(cfg, run_dir: Path) -> list[Record]:
    """With ``cfg.resume``: the newest ``ok`` row under the sweep directory that
    was measured with these same settings (the ``config`` column) on a device
    of this name; else []. Covers every workload and task: the row's full
    resolved config is the case's identity."""
    if not cfg.get("resume", False):
        return []
    from omegaconf import OmegaConf

    from .device import cpu_model, resolve_device

    try:
        device = resolve_device(cfg.device.name)
    except Exception:  # noqa: BLE001 - a bad setting: let the job say so in its own row
        return []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    df = read_job_records(search_dir(run_dir))
    if df.empty or "config" not in df:
        return []
    want = _same_settings(OmegaConf.to_yaml(cfg, resolve=True))
    hits = df[(df["status"] == "ok") & (df["device_name"] == name)]
    hits = hits[[_same_settings(c) == want for c in hits["config"]]]
    if hits.empty:
        return []
    hits = hits.sort_values("timestamp", ascending=False).head(1)
    names = {f.name for f in dataclasses.fields(Record)}
    print(f"[resume] ok row for this case already in {hits.iloc[0]['job_dir']}: not measured again", flush=True)
    return [Record(**{k: v for k, v in r.items() if k in names}) for r in hits.to_dict("records")]


# -- skip cases that cannot fit -------------------------------------------
def available_bytes(device: torch.device) -> tuple[int, str]:
    """Memory a case may use on ``device`` and where that number came from."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), "cuda free memory (torch.cuda.mem_get_info)"
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    return 0, "unknown"


def skip_record(cfg, module, hw: tuple[int, int], device: torch.device, precision, base: dict) -> Record | None:
    """A ``skipped`` row when the case obviously cannot fit, else None.

    ``memory_estimate`` is a lower bound (inputs, q/k/v/out and the core's
    materialised intermediates, no weights or allocator slack), so a skipped
    case would certainly have run out of memory.
    """
    if not cfg.get("skip_unfit", True):
        return None
    itemsize = torch.empty((), dtype=precision.compute_dtype).element_size()
    need = module.memory_estimate(cfg.batch_size, hw, itemsize, cfg.workload.name)
    limit_mib = float(cfg.get("memory_limit_mib", 0) or 0)
    if limit_mib > 0:
        have, source = int(limit_mib * 2**20), "memory_limit_mib"
    else:
        have, source = available_bytes(device)
    if have <= 0 or need <= have:
        return None
    reason = (f"not launched: needs at least {need / 2**30:.2f} GiB (memory_estimate), "
              f"{have / 2**30:.2f} GiB available ({source})")
    return Record(**base, status="skipped", reason=reason)


# -- a job that failed outside measuring ------------------------------------
def failed_record(cfg, error: BaseException, run_dir: Path) -> Record:
    """An ``error`` row for a sweep job that raised outside ``measure_case``."""
    from .runner import invalid_record  # runner imports this module

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.log").write_text("".join(traceback.format_exception(error)))
    row = invalid_record(cfg, f"{first_line(error)} (traceback in {run_dir / 'error.log'})")
    return dataclasses.replace(row, status="error")


# -- how many jobs a multirun launches ---------------------------------------
def count_jobs(sweeper_params: dict | None, task_overrides: list[str]) -> int:
    """Jobs the basic sweeper makes from ``hydra.sweeper.params`` and the
    command line (same rule: a later override of a key replaces an earlier one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    counts: dict[str, int] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.get_key_element()
        counts[key] = len(list(o.sweep_string_iterator())) if o.is_discrete_sweep() else 1
    return max(1, int(pd.Series(list(counts.values()) or [1]).prod()))
