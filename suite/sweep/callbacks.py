"""Hydra callbacks for sweeps: progress, one line per job, merge + report at the end.

Registered in ``conf/config.yaml`` under ``hydra.callbacks.sweep``. Works with
the basic launcher (jobs in this process) and the submitit launchers (jobs in
other processes or on other nodes) alike: each job writes
``job_status.<num>.json`` in its folder when it starts and ends, tagged with
the sweep's id, and the process
that launched the sweep polls those files. Nothing here is needed for a
single run; every hook returns at once outside a multirun.
"""
from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from . import lock

FAILED = ("error", "oom", "interrupted")  # a job "failed" when a row has one of these
NOT_RUN = ("skipped", "unsupported", "unavailable", "invalid")


def _multirun(config: DictConfig) -> bool:
    from hydra.types import RunMode

    return config.hydra.get("mode") == RunMode.MULTIRUN


def one_line(rows: list[Any], width: int = 66) -> str:
    """A job's result (its rows) in one short line: the case and its outcome as
    its workload says it, the timing verdict when flagged; at most ``width``
    characters (the counter in front makes it fit 80 columns)."""
    from ..records import flagged
    from ..workloads import get_workload

    parts = []
    for r in rows:
        try:
            text = get_workload(str(r.get("workload"))).line(r)
        except Exception:  # noqa: BLE001 - an unknown workload (a row from a bad setting)
            text = f"{r.get('variant') or r.get('attention')}: {r.get('status')}"
        if r.get("status") not in ("ok", None):
            text = f"{text} ({r.get('reason') or ''})" if r.get("reason") else text
        quality = r.get("timing_quality", "")
        parts.append(text + (f" [{quality}]" if flagged(quality) else ""))
    line = " | ".join(parts) or "no rows"
    return line if len(line) <= width else line[: width - 1] + "…"


def pin_local_gpu(job_num: int) -> str | None:
    """Under submitit's local executor, keep only GPU ``job_num % n`` visible.

    submitit gives every job of a batch the same CUDA_VISIBLE_DEVICES; with
    hydra.sweeper.max_batch_size equal to the GPU count, consecutive job
    numbers then land on distinct GPUs. Must run before CUDA is initialised.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") != "local":
        return None
    ids = [i for i in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if i.strip()]
    if len(ids) < 2:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = ids[job_num % len(ids)]
    return os.environ["CUDA_VISIBLE_DEVICES"]


SWEEP_ID = "ELFATT_SUITE_SWEEP_ID"  # env: the launching process's sweep, read by every job it starts
WIDTH = 80


def _write_status(job_dir: Path, num: int, **fields: Any) -> None:
    """This job's state in ``job_status.<num>.json`` (one file per job number, so two
    jobs of one case folder never hide each other), tagged with the sweep's id."""
    job_dir.mkdir(parents=True, exist_ok=True)
    name = f"job_status.{num}.json"
    tmp = job_dir / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"sweep": os.environ.get(SWEEP_ID, ""), "num": num, **fields}))
    tmp.replace(job_dir / name)  # atomic: the poller never reads half a file


class SweepTracker:
    """Counts jobs from their status files and shows a progress bar that fits 80 columns."""

    def __init__(self, sweep_dir: Path, total: int, sweep_id: str, poll_s: float = 0.5):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.sweep_dir, self.total, self.sweep_id, self.poll_s = Path(sweep_dir), total, sweep_id, poll_s
        self.start = time.time()
        self.done: dict[tuple, dict] = {}
        self.running: set[tuple] = set()
        self.lock = threading.Lock()
        self.console = Console(width=min(WIDTH, Console().width))
        self.progress = Progress(TextColumn("sweep"), BarColumn(bar_width=16), TextColumn("{task.fields[info]}"),
                                 console=self.console, transient=True)
        self.task = self.progress.add_task("sweep", total=total, info="")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def begin(self) -> None:
        # In a terminal: a live bar under the jobs' lines. In a log (CI,
        # submitit, a pipe) each job's line carries the count done.
        if self.console.is_terminal:
            self.progress.start()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def counts(self) -> dict[str, int]:
        failed = sum(1 for s in self.done.values() if s.get("failed"))
        not_run = sum(1 for s in self.done.values() if s.get("not_run"))
        flagged = sum(1 for s in self.done.values() if s.get("flagged"))
        return dict(done=len(self.done), running=len(self.running), failed=failed, not_run=not_run, flagged=flagged)

    def eta_s(self) -> float | None:
        n = len(self.done)
        if n == 0:
            return None
        return (time.time() - self.start) / n * max(0, self.total - n)

    def summary(self) -> str:
        """Short enough for the bar's line: done, failed, flagged, ETA."""
        c, eta = self.counts(), self.eta_s()
        eta_text = "?" if eta is None else _clock(eta)
        return f"{c['done']}/{self.total} done, {c['failed']} failed, {c['flagged']} flagged, ETA {eta_text}"

    def poll(self) -> None:
        """Read new status files of this sweep; print one line for each newly finished job."""
        with self.lock:
            for f in self.sweep_dir.rglob("job_status.*.json"):
                try:
                    s = json.loads(f.read_text())
                except (OSError, ValueError):
                    continue
                key = (str(f.parent), s.get("num"))
                if s.get("sweep") != self.sweep_id or key in self.done:
                    continue  # left by an earlier run of this sweep folder, or seen
                if s.get("state") == "done":
                    self.running.discard(key)
                    self.done[key] = s
                    head = f"[{len(self.done)}/{self.total}] #{s.get('num')} "
                    line = head + str(s.get("line", ""))
                    self.progress.console.print(line if len(line) <= WIDTH else line[: WIDTH - 1] + "\u2026",
                                                markup=False, highlight=False, soft_wrap=True)
                else:
                    self.running.add(key)
            self.progress.update(self.task, completed=len(self.done), info=self.summary())

    def stop(self, how: str = "finished") -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()
        self.progress.stop()  # restores the terminal, also when the sweep was interrupted
        c = self.counts()
        print(f"sweep {how}: {c['done']}/{self.total} done, {c['failed']} failed, {c['not_run']} not run, "
              f"{c['flagged']} flagged, {_clock(time.time() - self.start)}", flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# The callback's settings (``hydra.callbacks.sweep.<name>``), for the README's settings table.
KNOBS = {
    "report": "after a multirun, write the figures and report.md (false: merge the rows only)",
    "progress": "show a live progress bar in a terminal (the one line per job stays)",
    "poll_s": "seconds between reads of the jobs' status files",
}


class SweepCallback(Callback):
    """Progress and per-job lines during a multirun; collect + report after it."""

    def __init__(self, report: bool = True, progress: bool = True, poll_s: float = 0.5) -> None:
        self.report = report
        self.show_progress = progress
        self.poll_s = poll_s
        self._tracker: SweepTracker | None = None
        self._lock: lock.Held | None = None

    def __getstate__(self) -> dict:
        # submitit pickles the Hydra context (and so this object) for each job:
        # the tracker's thread and console stay in the launching process.
        return {k: v for k, v in self.__dict__.items() if k not in ("_tracker", "_lock")} | {"_tracker": None,
                                                                                             "_lock": None}

    # -- the launching process ------------------------------------------------
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from .resume import count_jobs

        sweep_dir = Path(str(config.hydra.sweep.dir))
        params = config.hydra.sweeper.get("params")
        total = count_jobs(dict(params) if params else {}, list(config.hydra.overrides.task))
        launcher = str(config.hydra.launcher.get("_target_", ""))
        gpus = config.hydra.launcher.get("gpus_per_node") or 0
        batch = config.hydra.sweeper.get("max_batch_size")
        if launcher.endswith("LocalLauncher") and gpus and (batch is None or batch > gpus):
            print(f"warning: submitit's local launcher starts a whole batch at once; with gpus_per_node={gpus} "
                  f"set hydra.sweeper.max_batch_size={gpus} so that jobs never share a GPU", flush=True)
        try:
            self._lock, note = lock.acquire(sweep_dir)
        except (lock.SweepLocked, OSError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if note:
            print(f"note: {note}", flush=True)
        resume = str(config.get("resume", "false")).lower()
        roots = [sweep_dir] + ([Path(str(config.records_dir))] if config.get("records_dir") else [])
        if resume not in ("false", "none") and not any(any(r.rglob("records.*")) for r in roots if r.exists()):
            verb = "holds" if len(roots) == 1 else "hold"
            print(f"note: resume={resume}: nothing to resume, {' and '.join(map(str, roots))} {verb} no "
                  f"earlier rows", flush=True)
        os.environ[SWEEP_ID] = uuid.uuid4().hex  # the jobs tag their status files with it
        if self.show_progress:
            self._tracker = SweepTracker(sweep_dir, total, os.environ[SWEEP_ID], self.poll_s)
            self._tracker.begin()
        atexit.register(self._interrupted)

    def _interrupted(self) -> None:
        """At exit before on_multirun_end (Ctrl-C, a full disk): restore the display, free the folder."""
        if self._tracker is not None:
            self._tracker.stop("stopped early")
            self._tracker = None
        lock.release(self._lock)
        self._lock = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        atexit.unregister(self._interrupted)
        if self._tracker is not None:
            self._tracker.stop()
            self._tracker = None
        lock.release(self._lock)
        self._lock = None
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:  # the rows are on disk already; a failure here loses nothing
            from ..collect import collect

            problems: list[str] = []
            roots = [sweep_dir] + ([Path(str(config.records_dir))] if config.get("records_dir") else [])
            roots = [r for r in roots if r.exists() and any(r.rglob("records.*"))] or [sweep_dir]
            table = collect(roots, out_dir=sweep_dir, problems=problems)
            for p in problems:
                print(f"could not read: {p}", flush=True)
            print(f"merged table: {table} (and .csv)", flush=True)
            if self.report:  # hydra.callbacks.sweep.report=false skips the figures
                from ..report import write_report

                print(f"report: {write_report(table, sweep_dir / 'report')}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"collect/report failed ({type(e).__name__}: {e}); the job rows are intact under {sweep_dir}; "
                  f"rerun: python -m suite.collect {sweep_dir} && python -m suite.report "
                  f"{sweep_dir / 'results.parquet'}", flush=True)

    # -- each job (this process, or a submitit worker) ----------------------------
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _multirun(config):
            return
        num = int(config.hydra.job.get("num", 0) or 0)
        pin_local_gpu(num)
        _write_status(Path(config.hydra.runtime.output_dir), num, state="running", start=time.time())
        if self._tracker is not None:  # same process (basic launcher): show it now
            self._tracker.poll()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not _multirun(config):
            return
        from hydra.core.utils import JobStatus

        from ..records import flagged as is_flagged

        rows = job_return._return_value if job_return.status == JobStatus.COMPLETED else None
        flagged = False
        if isinstance(rows, list) and rows:
            statuses = [r.get("status", "") for r in rows]
            flagged = any(is_flagged(r.get("timing_quality", "")) for r in rows)
            line = one_line(rows)
        else:  # the job raised past run.py: say so (run.py turns exceptions into rows first)
            statuses = ["error"]
            line = f"error: job raised {job_return._return_value!r}"[:300]
        _write_status(
            Path(config.hydra.runtime.output_dir), int(config.hydra.job.get("num", 0) or 0), state="done",
            end=time.time(), statuses=statuses, line=line,
            failed=any(s in FAILED for s in statuses), not_run=all(s in NOT_RUN for s in statuses), flagged=flagged,
        )
        if self._tracker is not None:  # same process (basic launcher): show it now
            self._tracker.poll()
