"""Slurm's side of a sweep, for ``suite/sweep/launcher.py``: each job's state
from sacct/scontrol, sbatch's refusals as one line, the row of a job that
ended without writing one, and what each job does on the node (signals, and
``slurm_job.json``: where it runs)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from .slurm_env import slurm_facts

WHERE_FILE = "slurm_job.json"  # written by each job in its folder when it starts
# sacct's State (first word) -> the row's status, for a job that wrote no row.
STATE_STATUS = {"CANCELLED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout", "PREEMPTED": "preempted",
                "OUT_OF_MEMORY": "oom"}
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "DEADLINE", "PREEMPTED", "OUT_OF_MEMORY",
                "NODE_FAIL", "BOOT_FAIL", "REVOKED")
REQUEUEABLE = ("PREEMPTED", "NODE_FAIL", "REQUEUED")  # sacct's word when Slurm may run the job again
ON_A_NODE = ("RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "SUSPENDED", "STOPPED",
             "RESIZING")
# sbatch's refusal, as words in its message -> the launcher setting to look at.
SBATCH_SETTINGS = (("gres", "gpus_per_node"), ("gpu", "gpus_per_node"), ("account", "account"),
                   ("partition", "partition"), ("qos", "qos"), ("feature", "constraint"),
                   ("time limit", "timeout_min"), ("memory", "mem_gb"), ("node configuration", "cpus_per_task"))


# -- Slurm's word on a job ------------------------------------------------------------
def _expand_ids(job_id: str) -> list[str]:
    """sacct's JobID, array ranges expanded: "7_[0-2%2]" -> 7_0, 7_1, 7_2."""
    from submitit.slurm.slurm import read_job_id

    out = []
    for part in read_job_id(job_id):
        if len(part) == 3:
            out += [f"{part[0]}_{k}" for k in range(int(part[1]), int(part[2]) + 1)]
        else:
            out.append("_".join(part[:2]))
    return out


def slurm_states(job_ids: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each job's latest State, Reason, ExitCode, NodeList and Elapsed, from sacct
    (scontrol where accounting is off). Ids as submitit names them (``<array>_<task>``)."""
    parents = sorted({j.split("_")[0] for j in job_ids})
    fields = ["JobID", "State", "Reason", "ExitCode", "NodeList", "Elapsed"]
    out: dict[str, dict[str, str]] = {}
    try:
        text = subprocess.run(["sacct", "-X", "-n", "-P", "-o", ",".join(fields), *[f"-j{p}" for p in parents]],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        text = ""
    for line in text.splitlines():
        values = dict(zip(fields, line.split("|")))
        try:
            ids = _expand_ids(values.get("JobID", ""))
        except Exception:  # noqa: BLE001 - a JobID this parser does not know: not ours
            continue
        for jid in ids:
            out[jid] = values
    # slurmctld's own view (the jobs it still holds, MinJobAge) where sacct knows nothing (accounting off, or
    # not recorded yet) and where sacct's last word may not be the end: a PREEMPTED or NODE_FAIL job that Slurm
    # requeues shows as such in sacct until its next run starts
    doubtful = [j for j in job_ids if j not in out or state_word(out[j].get("State", "")) in REQUEUEABLE]
    if doubtful:
        live = _scontrol_states(sorted({j.split("_")[0] for j in doubtful}))
        for jid in doubtful:
            if jid in live and (jid not in out or state_word(live[jid]["State"]) not in FINAL_STATES):
                out[jid] = live[jid]
    return out


def _scontrol_states(parents: Sequence[str]) -> dict[str, dict[str, str]]:
    """``scontrol show job`` of each job (an array's every task in one call), as slurm_states() gives it."""
    out: dict[str, dict[str, str]] = {}
    for parent in parents:
        try:
            text = subprocess.run(["scontrol", "-o", "show", "job", parent], capture_output=True, text=True,
                                  timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in text.splitlines():
            kv = dict(w.split("=", 1) for w in line.split() if "=" in w)
            if not kv.get("JobState"):
                continue
            array, task = kv.get("ArrayJobId", ""), kv.get("ArrayTaskId", "")
            try:
                ids = _expand_ids(f"{array}_[{task}]" if array and task else kv.get("JobId", ""))
            except Exception:  # noqa: BLE001 - an id this parser does not know: not ours
                continue
            info = {"JobID": ids[0] if ids else "", "State": kv["JobState"], "Reason": kv.get("Reason", ""),
                    "ExitCode": kv.get("ExitCode", ""), "NodeList": kv.get("NodeList", ""),
                    "Elapsed": kv.get("RunTime", ""), "Restarts": kv.get("Restarts", "0")}
            out.update({jid: info for jid in ids})
    return out


def state_word(state: str) -> str:
    return (state or "").split()[0].rstrip("+") if state else ""


def describe_state(job_id: str, info: dict[str, str]) -> str:
    """``Slurm job 7_1 CANCELLED by 0 after 00:00:09 on node1 (exit 0:15)``, empty parts left out."""
    parts = [f"Slurm job {job_id} {info.get('State') or 'state unknown'}"]
    if info.get("Reason") not in (None, "", "None"):
        parts.append(f"reason {info['Reason']}")
    if info.get("Elapsed"):
        parts.append(f"after {info['Elapsed']}")
    if info.get("NodeList") not in (None, "", "None assigned", "(null)"):
        parts.append(f"on {info['NodeList']}")
    text = ", ".join(parts)
    return f"{text} (exit {info['ExitCode']})" if info.get("ExitCode") else text


def sbatch_line(message: str, params: dict) -> str:
    """One line for sbatch's refusal, naming the launcher setting it is about."""
    lines = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    msg = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "sbatch failed")
    msg = msg.replace("sbatch: error: ", "").replace("Batch job submission failed: ", "")
    low = msg.lower()
    key = next((k for words, k in SBATCH_SETTINGS if words in low), None)
    where = f"; check hydra.launcher.{key}={params.get(key)}" if key else ""
    return f"Slurm refused the sweep's jobs (sbatch: {msg}){where}; nothing was submitted"


def still_on_a_node(ids: list[str]) -> bool:
    """Is any of these jobs still on a node (running, or its processes still being ended)?"""
    parents = sorted({j.split("_")[0] for j in ids})
    try:
        text = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%T", "-j", ",".join(parents)],
                              capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state_word(s) in ON_A_NODE for s in text.split())


# -- in each job --------------------------------------------------------------------
def take_signals() -> None:
    """In a Slurm job, before the case runs, replace submitit's handlers: its USR2 handler raises inside the
    running case when the job is not requeued (always, for a short time limit), and it ignores SIGTERM, so a
    cancelled job runs on until Slurm's SIGKILL (KillWait later). Here USR2 (``signal_delay_s`` before the
    limit, or a preemption with PreemptParameters=send_user_signal) prints one line and the case goes on;
    SIGTERM (scancel, a preemption, the limit) ends the job at once. Either way the launcher reads why the
    job ended from Slurm and writes its row."""
    from submitit.core.job_environment import JobEnvironment

    def near_limit(signum: int, frame: Any) -> None:
        print(f"slurm: {signal.Signals(signum).name}: Slurm's time limit (or a preemption) is near; the case "
              f"goes on, and if it is still running when Slurm ends the job the sweep records why", flush=True)

    def ending(signum: int, frame: Any) -> None:
        print(f"slurm: {signal.Signals(signum).name}: Slurm is ending this job (cancelled, preempted or at its "
              f"time limit); stopping now, the sweep records why", flush=True)
        os._exit(128 + signum)

    signal.signal(JobEnvironment._usr_sig(), near_limit)
    signal.signal(signal.SIGTERM, ending)


def note_where(cfg: DictConfig, job_dir: Path) -> None:
    """Write ``slurm_job.json``: slurm_facts() and the device this case runs on (for a row the launcher may write)."""
    facts: dict[str, Any] = {"slurm": slurm_facts(), "start": time.time()}
    try:
        from ..device import environment, resolve_device, resolve_precision

        device = resolve_device(str(cfg.device.name))
        facts.update(device=device.type, dtype=resolve_precision(str(cfg.precision.name), device).name,
                     env=environment(device))
    except Exception:  # noqa: BLE001 - e.g. device=cuda on a node without one: the job reports it
        pass
    job_dir.mkdir(parents=True, exist_ok=True)
    tmp = job_dir / f".{WHERE_FILE}.tmp"
    tmp.write_text(json.dumps(facts, default=str))
    tmp.replace(job_dir / WHERE_FILE)


def noting_where(task: Any, cfg: DictConfig) -> Any:
    from hydra.core.hydra_config import HydraConfig

    try:
        note_where(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Exception as e:  # noqa: BLE001 - never fail a case for its note
        print(f"slurm: could not write {WHERE_FILE}: {e}", flush=True)
    return task(cfg)


# -- a row for a job that wrote none ----------------------------------------------------
def problem_row(cfg: DictConfig, overrides: list[str], job_dir: Path, sweep_dir: Path, status: str,
                reason: str, since: float, node: str) -> list | None:
    """Write the row of a job that wrote none; None (and one line) when it cannot be written."""
    import torch

    from ..config import canonical, parse_resolution
    from ..job import make_job, planned_identity
    from ..records import Record, base_fields, write_records

    try:
        task = cfg.copy()
        choice = OmegaConf.select(task, "hydra.runtime.choices.attention")
        with open_dict(task):
            del task["hydra"]
        job = make_job(task, job_dir, choice=choice, overrides=overrides, sweep_dir=sweep_dir)
        where = read_where(job_dir, since)
        c = job.cfg
        device = torch.device(where.get("device", "cpu"))
        dtype = where.get("dtype") or str(c.precision.name)
        known = {"device": device.type, "precision": dtype} if where.get("env") else {}
        case = canonical(planned_identity(job) | known)
        base = base_fields(job, {"size": parse_resolution(c.resolution)}, device, dtype, where.get("env") or {},
                           case)
        if not where.get("env"):  # never started, or could not tell: the settings as given
            base["device"] = str(c.device.name)
            base["hostname"] = (where.get("slurm") or {}).get("nodelist", "") or node
        rows = [Record(**base, status=status, reason=reason)]
        write_records(rows, job.run_dir)
        return rows
    except Exception as e:  # noqa: BLE001 - bad settings, a full disk: say so, keep going
        print(f"slurm: {job_dir.name}: {status}: {reason}; its row could not be "
              f"written ({type(e).__name__}: {e})", flush=True)
        return None


def wrote_rows(job_dir: Path, since: float) -> bool:
    """Did the job write its rows in this sweep (a part or a records file newer than the submission)?"""
    for path in [*job_dir.glob("rows/*.parquet"), job_dir / "records.parquet", job_dir / "records.csv"]:
        try:
            if path.stat().st_mtime >= since - 1:
                return True
        except OSError:
            continue
    return False


def read_where(job_dir: Path, since: float) -> dict:
    """The job's slurm_job.json of this sweep (one left by an earlier run does not count)."""
    try:
        where = json.loads((job_dir / WHERE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return where if float(where.get("start", 0)) >= since - 1 else {}
