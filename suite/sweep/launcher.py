"""Slurm sweeps that survive their jobs: the launcher of ``hydra/launcher=slurm_cpu``
and ``slurm_gpus`` (hydra-submitit-launcher's ``SlurmLauncher``, subclassed).

What it adds to the plugin's launcher:

- **Skip before submitting.** ``plan_jobs(job_overrides, sweep_dir)`` says
  which jobs to submit; with ``resume=true`` a case that already has an ``ok``
  row under the sweep folder is not submitted at all (the in-job resume of
  ``suite/sweep/resume.py`` stays as the second check).
- **No launcher traceback for a job that Slurm ended.** Each submitted job's
  end is read from ``sacct`` (State, Reason, exit code, node, elapsed) and
  from submitit's result file. A job that wrote no row becomes one: status
  ``cancelled``, ``timeout``, ``preempted``, ``oom`` or ``error``, Slurm's
  state and reason in ``reason``, one line per job. The sweep then ends as
  usual: ``SweepCallback.on_multirun_end`` merges the rows and reports.
- **The sweep lock is held until every job has left its node** (``launch``
  returns only then; a requeued job is waited for).
- **sbatch refusals** (bad partition, account, QoS, GPUs...) are one line
  naming the setting, exit code 2, nothing submitted.
- **In each job:** Slurm's warning signal (``signal_delay_s`` before the
  limit, and a preemption with ``send_user_signal``) only prints a line: it
  never raises inside a measurement, and submitit never requeues a timed-out
  case by itself. SIGTERM (scancel, preemption, the limit) ends the job at
  once instead of running on until KillWait's SIGKILL; the launcher then
  writes the row. The job also notes where it runs (``slurm_job.json`` in its
  folder: ``slurm_facts()`` and the device), so such a row names the device.

Slurm's side (sacct/scontrol/squeue, sbatch's messages, the job-side pieces,
the row of a job that wrote none) lives in ``slurm_jobs.py``; what a job was
given (ids, nodes, CPUs, GPUs, binding) in ``slurm_env.py``.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .slurm_jobs import (FINAL_STATES, STATE_STATUS, describe_state, noting_where, problem_row,
                         sbatch_line, slurm_states, state_word, still_on_a_node, take_signals, wrote_rows)

log = logging.getLogger(__name__)


# -- which jobs to submit ---------------------------------------------------------
def _task_config(overrides: list[str]) -> DictConfig:
    """The job's task config (no ``hydra`` node), composed as ``suite/cli.py`` does."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside run.py's Hydra app: the app's config search path
        return compose(config_name="config", overrides=overrides)
    from ..cli import CONF
    from ..job import register_configs

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def plan_jobs(job_overrides: Sequence[Sequence[str]], sweep_dir: str | Path) -> tuple[list[int], dict[int, str]]:
    """Which of a batch's jobs to submit: ``(to_submit, skipped)``, indices into
    ``job_overrides``; ``skipped`` maps each skipped job to why (one phrase).

    A job whose settings say ``resume=true`` (``trusted``: counting only rows
    whose timing is not flagged) is skipped when an ``ok`` row of its case (the
    suite's one case identity, ``suite.job.planned_identity``: device,
    precision and threads left open where the node decides them) is already
    under ``sweep_dir`` or its ``records_dir``. A submitted job's own resume
    still compares the device name. A job whose settings cannot be typed is
    submitted (it becomes its own ``invalid`` row).
    """
    from ..config import BadInput
    from ..job import make_job, planned_identity, same_case
    from ..records import flagged_mask, read_job_records

    wanted: dict[int, tuple[dict, str, Path | None] | None] = {}
    for i, overrides in enumerate(job_overrides):
        try:
            job = make_job(_task_config(list(overrides)), ".")
        except (BadInput, Exception):  # noqa: BLE001 - the job reports its own bad settings
            wanted[i] = None
            continue
        extra = Path(job.cfg.records_dir) if job.cfg.records_dir else None
        wanted[i] = None if job.cfg.resume == "false" else (planned_identity(job), job.cfg.resume, extra)
    if not any(w is not None for w in wanted.values()):
        return list(range(len(job_overrides))), {}
    problems: list[str] = []
    roots = {Path(sweep_dir)} | {w[2] for w in wanted.values() if w is not None and w[2] is not None}
    frames = [read_job_records(r, problems) for r in roots if r.exists()]
    for p in problems:
        print(f"[resume] could not read {p}", flush=True)
    frames = [f for f in frames if not f.empty and {"status", "case"} <= set(f.columns)]
    ok = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["status", "case", "job_dir"])
    ok = ok[ok["status"] == "ok"]
    to_submit, skipped = [], {}
    for i, want in wanted.items():
        rows = ok if want is None or want[1] != "trusted" else ok[~flagged_mask(ok)]
        hit = next((d for c, d in zip(rows["case"], rows["job_dir"]) if want and same_case(str(c), want[0])), None)
        if hit is not None:
            skipped[i] = f"ok row already in {hit}"
        else:
            to_submit.append(i)
    return to_submit, skipped


# -- the launcher -----------------------------------------------------------------------
class SlurmSweepLauncher(SlurmLauncher):
    """``hydra/launcher=slurm_cpu`` / ``slurm_gpus`` (module docstring)."""

    poll_s = (1.0, 5.0, 15.0)  # sacct polls: every 1 s for the first minute, 5 s until 10 min, then 15 s

    # -- in the job (submitit unpickles this object on the node and calls it) --
    def __call__(self, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
                 singleton_state: dict) -> JobReturn:
        take_signals()
        task = self.task_function
        self.task_function = functools.partial(noting_where, task)
        try:
            return super().__call__(sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
        finally:
            self.task_function = task

    # -- in the launching process --
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        jobs = [list(o) for o in job_overrides]
        cfgs = [self.hydra_context.config_loader.load_sweep_config(self.config, o) for o in jobs]
        dirs = [sweep_dir / str(OmegaConf.select(c, "hydra.sweep.subdir")) for c in cfgs]
        nums = [initial_job_idx + i for i in range(len(jobs))]
        returns: dict[int, JobReturn] = {}

        to_submit, skipped = plan_jobs(jobs, sweep_dir)
        for i, why in skipped.items():
            self._report(dirs[i], nums[i], f"resumed    {dirs[i].name}: {why.replace(str(sweep_dir) + os.sep, '')}; "
                                           f"not submitted", failed=False, statuses=["ok"])
            returns[i] = JobReturn(overrides=jobs[i], working_dir=str(dirs[i]), status=JobStatus.COMPLETED,
                                   _return_value=[])
        if skipped:
            print(f"resume: {len(skipped)} of {len(jobs)} jobs already have an ok row under {sweep_dir}: "
                  f"not submitted", flush=True)
        interrupted = False
        if to_submit:
            submitted_at = time.time()
            subs = self._submit([jobs[i] for i in to_submit], [nums[i] for i in to_submit])
            try:
                states = self._wait_all(subs, [nums[i] for i in to_submit])
            except KeyboardInterrupt:  # Ctrl-C: cancel the jobs, wait for them to go, write their rows, then stop
                interrupted = True
                ids = sorted({s.job_id.split("_")[0] for s in subs})
                print(f"interrupted: cancelling the sweep's Slurm jobs ({', '.join(ids)}) and waiting for them to "
                      f"end", flush=True)
                subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
                states = self._wait_all(subs, [nums[i] for i in to_submit], limit_s=120)
            for i, job in zip(to_submit, subs):
                try:
                    returns[i] = self._outcome(job, states.get(job.job_id, {}), jobs[i], cfgs[i], dirs[i], nums[i],
                                               sweep_dir, submitted_at)
                except Exception as e:  # noqa: BLE001 - one job's bookkeeping never ends the sweep
                    print(f"slurm: #{nums[i]} (job {job.job_id}): could not read how it ended "
                          f"({type(e).__name__}: {e})", flush=True)
                    returns[i] = JobReturn(overrides=jobs[i], working_dir=str(dirs[i]), status=JobStatus.COMPLETED,
                                           _return_value=[])
        if interrupted:
            raise KeyboardInterrupt
        return [returns[i] for i in range(len(jobs))]

    def _executor(self) -> Any:
        import submitit

        params = dict(self.params)
        folder = params.pop("submitit_folder")
        max_num_timeout = params.pop("max_num_timeout", 0)
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=max_num_timeout)
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{k if k in shared else f"slurm_{k}": v for k, v in params.items()})
        return executor

    def _submit(self, jobs: list[list[str]], nums: list[int]) -> list[Any]:
        """Submit as one array; sbatch's refusal or a missing Slurm is one line and exit 2."""
        from submitit.core.utils import FailedJobError

        try:
            executor = self._executor()
        except RuntimeError as e:  # submitit: no srun here
            _stop(f"hydra/launcher={self._preset()} needs Slurm's commands (sbatch, srun, sacct) on this "
                  f"machine ({e})")
        except ValueError as e:
            _stop(f"hydra.launcher: {str(e).splitlines()[0]}")
        for overrides, num in zip(jobs, nums):
            log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        args = [(o, "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state()) for o, n in zip(jobs, nums)]
        caught = io.StringIO()  # submitit prints sbatch's stderr before raising: keep it for the one line
        try:
            with contextlib.redirect_stderr(caught):
                subs = executor.map_array(self, *zip(*args))
        except FailedJobError as e:
            _stop(sbatch_line(str(e) or caught.getvalue(), self.params))
        except OSError as e:
            _stop(f"sbatch could not run ({e}); nothing was submitted")
        ids = sorted({s.job_id.split("_")[0] for s in subs})
        print(f"slurm: submitted {len(subs)} job{'s' * (len(subs) != 1)} as {', '.join(ids)} "
              f"(submitit logs: {str(self.params['submitit_folder']).replace('%j', '<job id>')})", flush=True)
        return subs

    def _preset(self) -> str:
        assert self.config is not None
        return str(OmegaConf.select(self.config, "hydra.runtime.choices.hydra/launcher", default="slurm"))

    def _poll(self, waited: float) -> float:
        return self.poll_s[0] if waited < 60 else self.poll_s[1] if waited < 600 else self.poll_s[2]

    def _wait_all(self, subs: list[Any], nums: list[int], limit_s: float | None = None) -> dict[str, dict[str, str]]:
        start = time.time()
        ids = [s.job_id for s in subs]
        num_of = dict(zip(ids, nums))
        final: dict[str, dict[str, str]] = {}
        seen_running: set[str] = set()
        requeued: set[str] = set()
        while True:
            states = slurm_states([j for j in ids if j not in final])
            for jid, info in states.items():
                word = state_word(info.get("State", ""))
                if word == "RUNNING":
                    seen_running.add(jid)
                if jid not in requeued and (word in ("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")
                                            or (word == "PENDING" and (jid in seen_running
                                                                       or info.get("Restarts", "0") != "0"))):
                    requeued.add(jid)
                    print(f"slurm: #{num_of.get(jid)} (job {jid}) was requeued by Slurm (preempted, or its node "
                          f"failed): it runs again", flush=True)
                    seen_running.discard(jid)
                if word in FINAL_STATES and jid in num_of:
                    final[jid] = info
            if len(final) == len(ids):
                break
            if limit_s is not None and time.time() - start > limit_s:
                break
            time.sleep(self._poll(time.time() - start))
        # sacct says ended as soon as slurmctld does; the processes may still be on the node (KillWait)
        deadline = time.time() + 120
        while time.time() < deadline and still_on_a_node(ids):
            time.sleep(1.0)
        return final

    def _outcome(self, sub: Any, info: dict[str, str], overrides: list[str], cfg: DictConfig, job_dir: Path,
                 num: int, sweep_dir: Path, submitted_at: float) -> JobReturn:
        """The job's JobReturn; a row of its own when it ended without writing one."""
        from submitit.core.utils import pickle_load

        outcome, value = None, None
        if sub.paths.result_pickle.exists():
            try:
                outcome, value = pickle_load(sub.paths.result_pickle)
            except Exception:  # noqa: BLE001 - a truncated result: as if none
                outcome = None
        if outcome == "success" and isinstance(value, JobReturn) and value.status == JobStatus.COMPLETED:
            return value  # the job wrote its rows and its line
        if outcome == "success" and isinstance(value, JobReturn):
            status, reason = "error", f"the job raised {_first_line(value._return_value)}"
        elif outcome == "error":
            status, reason = "error", f"the job failed in submitit: {_last_line(value)}"
        else:
            status = STATE_STATUS.get(state_word(info.get("State", "")), "error")
            reason = describe_state(sub.job_id, info) if info else \
                f"Slurm job {sub.job_id} ended with no state from sacct or scontrol"
        node = info.get("NodeList", "") if info.get("NodeList") not in ("None assigned", "(null)") else ""
        rows = [] if wrote_rows(job_dir, submitted_at) else \
            problem_row(cfg, overrides, job_dir, sweep_dir, status, reason, submitted_at, node)
        if rows is not None:
            from .callbacks import one_line

            line = one_line(rows) if rows else f"{status}: {reason} (the job's own row stands)"
            self._report(job_dir, num, line, failed=True, statuses=[status])
        return JobReturn(overrides=overrides, working_dir=str(job_dir), status=JobStatus.COMPLETED,
                         _return_value=rows or [])

    def _report(self, job_dir: Path, num: int, line: str, failed: bool, statuses: list[str]) -> None:
        """Mark the job done for the sweep's progress (its callback prints the line), or print it here."""
        from .callbacks import _write_status

        try:
            _write_status(job_dir, num, state="done", end=time.time(), statuses=statuses, line=line,
                          failed=failed, not_run=False, flagged=False)
        except OSError:
            pass
        assert self.config is not None
        sweep_cb = OmegaConf.select(self.config, "hydra.callbacks.sweep", default=None)
        if not (sweep_cb is not None and sweep_cb.get("progress", True)):
            print(f"#{num} {line}", flush=True)


# -- small helpers ----------------------------------------------------------------------
def _stop(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _first_line(e: Any) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _last_line(trace: Any) -> str:
    lines = [ln for ln in str(trace).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "no trace")[:300]
