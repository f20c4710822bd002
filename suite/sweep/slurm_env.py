"""What Slurm gave this process: job and array ids, nodes, CPUs and GPUs, and
whether the CPU binding matches the CPUs allocated.

``slurm_facts()`` reads only the environment and the process's affinity
(no Slurm command runs), so a job can call it at any time; outside Slurm it
returns ``{"in_slurm": False, ...}`` with empty ids.
"""
from __future__ import annotations

import os
import re


def _count_list(text: str) -> int:
    """Items in a comma list ("0,1,3" -> 3); ranges count in full ("0-3" -> 4)."""
    n = 0
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi.isdigit() and lo.isdigit() else 1
    return n


def _first_count(text: str) -> int:
    """CPUs on the first node of SLURM_JOB_CPUS_PER_NODE ("4(x2),2" -> 4); 0 when unreadable."""
    m = re.match(r"\s*(\d+)", text or "")
    return int(m.group(1)) if m else 0


def _int(text: str | None) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return 0


def cpus_allocated(env: dict[str, str] | None = None) -> int:
    """CPUs Slurm gave this task: --cpus-per-task, else the CPUs of the job on this node; 0 outside Slurm."""
    env = os.environ if env is None else env
    return (_int(env.get("SLURM_CPUS_PER_TASK")) or _int(env.get("SLURM_CPUS_ON_NODE"))
            or _first_count(env.get("SLURM_JOB_CPUS_PER_NODE", "")))


def gpus_allocated(env: dict[str, str] | None = None) -> int:
    """GPUs Slurm gave this job on this node (gres gpu); 0 outside Slurm or without GPUs."""
    env = os.environ if env is None else env
    if _int(env.get("SLURM_GPUS_ON_NODE")):
        return _int(env.get("SLURM_GPUS_ON_NODE"))
    for key in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if env.get(key, "").strip():
            return _count_list(env[key])
    return 0


def affinity() -> int:
    """CPUs this process may run on (0 where the platform cannot tell)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return 0


def slurm_facts(env: dict[str, str] | None = None, cpu_affinity: int | None = None) -> dict:
    """This process's Slurm job, as plain values (strings and ints):

    in_slurm, job_id (the array job's own id for an array task), array_job_id,
    array_task_id, slurm_id (what sacct and scancel take: ``<array>_<task>``
    or the job id), nodelist, partition, cpus (allocated to this task),
    gpus (allocated on this node), cuda_visible_devices, cpu_affinity (CPUs
    the process may run on), binding ("ok"; "loose" when the affinity allows
    more CPUs than Slurm allocated, so threads can use CPUs given to other
    jobs; "" when unknown), binding_note (one sentence when loose).
    """
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID", "") or env.get("SLURM_JOBID", "")
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID", ""), env.get("SLURM_ARRAY_TASK_ID", "")
    cpus = cpus_allocated(env)
    aff = affinity() if cpu_affinity is None else cpu_affinity
    binding, note = "", ""
    if job_id and cpus and aff:
        if aff > cpus:
            binding = "loose"
            note = (f"the CPU binding allows {aff} CPUs but Slurm allocated {cpus}: threads may run on CPUs "
                    f"given to other jobs (ask for task/affinity or task/cgroup binding, or set threads={cpus})")
        else:
            binding = "ok"
    return {
        "in_slurm": bool(job_id),
        "job_id": job_id,
        "array_job_id": array_job,
        "array_task_id": array_task,
        "slurm_id": f"{array_job}_{array_task}" if array_job and array_task else job_id,
        "nodelist": env.get("SLURM_JOB_NODELIST", "") or env.get("SLURM_NODELIST", ""),
        "partition": env.get("SLURM_JOB_PARTITION", ""),
        "cpus": cpus,
        "gpus": gpus_allocated(env),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", ""),
        "cpu_affinity": aff,
        "binding": binding,
        "binding_note": note,
    }
