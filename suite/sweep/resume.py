"""Sweep bookkeeping inside one job: resume, skip-before-launch, job counts.

- ``resume=true``: a case that already has an ``ok`` row under the sweep
  folder or ``records_dir`` (same case, same device name) is not measured
  again (the job returns that row and writes nothing); ``resume=trusted``
  counts only rows whose timing verdict is not flagged, so untrusted timings
  are taken again. Needs a stable sweep folder: the presets set
  ``hydra.sweep.dir=results/sweeps/<preset>``.
- A case whose memory estimate (a lower bound) exceeds what the device has
  becomes a ``skipped`` row and is not measured.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch

from ..config import Job
from ..device import available_bytes
from ..records import Record, flagged_mask, read_job_records


def resumed_record(job: Job, base: dict) -> Record | None:
    """With ``resume=true``: the newest ``ok`` row under the sweep folder (and under
    ``records_dir`` when set) of this case (the ``case`` column: every setting that
    changes what is measured) on a device of this name; with ``resume=trusted``
    only an ok row whose timing is not flagged counts. Else None."""
    if job.cfg.resume == "false":
        return None
    problems: list[str] = []
    roots = list(dict.fromkeys(p for p in (job.sweep_dir, job.run_dir if job.cfg.records_dir else None,
                                           None if job.sweep_dir else job.run_dir) if p is not None))
    frames = [read_job_records(r, problems) for r in roots if Path(r).exists()]
    for p in problems:
        print(f"[resume] could not read {p}; the other rows were used", flush=True)
    frames = [f for f in frames if not f.empty and "case" in f]
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    hits = df[(df["status"] == "ok") & (df["device_name"] == base["device_name"]) & (df["case"] == base["case"])]
    if job.cfg.resume == "trusted":
        hits = hits[~flagged_mask(hits)]
    if hits.empty:
        return None
    hit = hits.sort_values("timestamp", ascending=False).iloc[0]
    print(f"[resume] ok row for this case already in {hit['job_dir']}: not measured again", flush=True)
    return Record(**{k: v for k, v in hit.to_dict().items() if k != "job_dir"})


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
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    counts: dict[str, int] = {}
    gh = GlobalHydra.instance()  # glob() lists a group's options through the config loader
    parser = OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized() else None)
    for o in parser.parse_overrides(lines):
        key = o.get_key_element()
        counts[key] = len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
    return max(1, math.prod(counts.values()))
