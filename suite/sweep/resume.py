"""Sweep bookkeeping inside one job: resume, skip-before-launch, job counts.

- ``resume=true``: a case that already has an ``ok`` row anywhere under the
  sweep folder (same settings, same device name) is not measured again (the
  job returns that row and writes nothing). Needs a stable sweep folder: the
  presets set ``hydra.sweep.dir=results/sweeps/<preset>``.
- A case whose memory estimate (a lower bound) exceeds what the device has
  becomes a ``skipped`` row and is not measured.
"""
from __future__ import annotations

import math

import torch

from ..config import Job
from ..device import available_bytes
from ..records import Record, read_job_records, record_fields

_VOLATILE = ("resume", "records_dir")  # settings that do not change what is measured


def same_settings(config_yaml: str) -> str:
    """The job's settings as YAML, less the keys that do not change the measurement."""
    keep = [ln for ln in str(config_yaml).splitlines() if not ln.startswith(tuple(f"{k}:" for k in _VOLATILE))]
    return "\n".join(keep)


def resumed_record(job: Job, base: dict) -> Record | None:
    """With ``resume=true``: the newest ``ok`` row under the sweep folder that
    was measured with these same settings (the ``config`` column) on a device
    of this name; else None. The row's full resolved config is the case's identity."""
    if not job.cfg.resume:
        return None
    problems: list[str] = []
    df = read_job_records(job.sweep_dir or job.run_dir, problems)
    for p in problems:
        print(f"[resume] could not read {p}; its CSV twin was used where readable", flush=True)
    if df.empty or "config" not in df:
        return None
    want = same_settings(job.config_yaml)
    hits = df[(df["status"] == "ok") & (df["device_name"] == base["device_name"])]
    hits = hits[[same_settings(c) == want for c in hits["config"]]]
    if hits.empty:
        return None
    hit = hits.sort_values("timestamp", ascending=False).iloc[0]
    names = set(record_fields())
    print(f"[resume] ok row for this case already in {hit['job_dir']}: not measured again", flush=True)
    return Record(**{k: v for k, v in hit.to_dict().items() if k in names})


# -- skip cases that cannot fit -------------------------------------------
def skip_reason(job: Job, wl, case, device: torch.device, precision) -> str:
    """Why the case is not launched (it obviously cannot fit), or "".

    A workload's ``memory_estimate`` is a lower bound (inputs, q/k/v/out and
    the core's materialised intermediates, no weights or allocator slack), so
    a skipped case would certainly have run out of memory.
    """
    if not job.cfg.skip_unfit:
        return ""
    need = wl.memory_estimate(case, job, precision)
    if not need:
        return ""
    if job.cfg.memory_limit_mib > 0:
        have, source = int(job.cfg.memory_limit_mib * 2**20), "memory_limit_mib"
    else:
        have, source = available_bytes(device)
    if have <= 0 or need <= have:
        return ""
    return (f"not launched: needs at least {need / 2**30:.2f} GiB (memory_estimate), "
            f"{have / 2**30:.2f} GiB available ({source})")


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
    return max(1, math.prod(counts.values()))
