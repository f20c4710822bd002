"""The one job pipeline, for every workload:

    validate -> describe -> reasons (unavailable / unsupported / skipped)
             -> build -> measure -> record -> write

Bad settings raise ``BadInput`` (one line, exit 2 in a single run; an
``invalid`` row in a sweep). Anything that goes wrong while measuring becomes
a row with its status and reason (``measure_case``, the one place that turns
a failure into a row); what was measured before is kept.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .conditions import set_threads
from .config import BadInput, Job, attention_label, check_choice, check_positive, load
from .device import dtype_unsupported_reason, environment, resolve_device
from .measure import TIMINGS, timing_unsupported, try_count_flops
from .records import (
    Record, RowsNotWritten, base_fields, check_writable, failure, unmeasured_row, write_records,
)
from .sweep.resume import resumed_record, skip_reason
from .workloads import Case, Workload, get_workload
from .workloads.base import DIRECTIONS


def check_settings(job: Job) -> None:
    """Top-level settings every workload reads: BadInput naming the bad value."""
    cfg = job.cfg
    if cfg.task is not None:
        raise BadInput(f"task={cfg.task} was removed; write workload={cfg.task}"
                       if cfg.task == "train_proxy" else f"task={cfg.task!r} was removed; choose a workload instead")
    check_positive(cfg, ("warmup", "repeats", "min_time_s", "memory_limit_mib", "accuracy_max_tokens", "threads",
                         "retries"), allow_zero=True)
    check_positive(cfg, ("noise_pct", "contention_cores"))
    check_choice("timing", cfg.timing, TIMINGS)
    check_choice("direction", cfg.direction, DIRECTIONS)
    if cfg.direction != "fwd" and cfg.workload.name == "train_proxy":
        raise BadInput(f"direction={cfg.direction} applies to op, layer and model; train_proxy always trains")


def measure_case(wl: Workload, case: Case, job: Job, device: torch.device, precision, base: dict) -> Record:
    """Measure one case. Never raises for problems of the case itself."""
    values: dict = {}
    notes: list[str] = list(case.notes)
    status = "ok"
    try:
        missing = wl.unavailable(case, device)
        if missing:
            return Record(**base, status="unavailable", reason="; ".join(missing))
        reasons = [dtype_unsupported_reason(device, precision.compute_dtype),
                   timing_unsupported(job.cfg.timing, device) if wl.timed else "",
                   *wl.unsupported(case, job, device, precision)]
        reasons = [r for r in reasons if r]
        if reasons:
            return Record(**base, status="unsupported", reason="; ".join(dict.fromkeys(reasons)))
        built = wl.build(case, job, device, precision)
        values.update(built.facts, flops_analytic=built.flops_analytic)
        measured = wl.measure(case, built, job, device)
        values.update(measured.values)
        notes += measured.notes
        status = measured.status
        info = wl.run_info(case)
        values["run_info"] = json.dumps(info, sort_keys=True) if info else ""
        if wl.timed and job.cfg.flops_count:  # last: a counter that fails to trace can spoil torch.compile's caches
            counted, note = try_count_flops(built.fn)
            values.update(flops_counted=counted, **wl.counted_columns(counted, job))
            notes.append(note)
    except BaseException as e:  # noqa: BLE001 - a failed case is a row, not a lost sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        status, reason = failure(e, job.run_dir)
        notes.insert(0, reason)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Record(**base, status=status, reason="; ".join(n for n in notes if n), **values)


def run(job: Job) -> list[Record]:
    """Validate, measure and write one job's rows. Raises BadInput on bad settings,
    RowsNotWritten when the rows cannot be written (checked before measuring too)."""
    wl = get_workload(job.cfg.workload.name)
    check_settings(job)
    check_writable(job.run_dir)
    set_threads(job.cfg.threads)
    case = wl.describe(job)
    device = resolve_device(job.cfg.device.name)
    precision = wl.precision_of(job, device)
    base = base_fields(job, case.identity, device, precision.name, environment(device))
    resumed = resumed_record(job, base)
    if resumed is not None:
        return [resumed]  # resume=true: this case has an ok row already; nothing measured or written
    skipped = skip_reason(job, wl, case, device, precision)
    try:
        record = Record(**base, status="skipped", reason=skipped) if skipped else \
            measure_case(wl, case, job, device, precision, base)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the case is marked, the rows written before it stay
        _note(write_records([Record(**base, status="interrupted", reason=interruption(e))], job.run_dir))
        e.marked = job.run_dir
        raise
    _note(write_records([record], job.run_dir))
    return [record]


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM from a scheduler, SIGHUP), handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def on_signal(signum, _frame) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)


def interruption(e: BaseException) -> str:
    """Why the run stopped, for the row and the message."""
    if isinstance(e, Terminated):
        import signal

        return f"terminated by {signal.Signals(e.signum).name} (signal {e.signum})"
    return "interrupted by the user (Ctrl-C)"


def exit_code(e: BaseException) -> int:
    """What a shell or scheduler expects: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (e.signum if isinstance(e, Terminated) else 2)


def _note(note: str) -> None:
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)


def make_job(cfg: DictConfig, run_dir: str | Path, *, choice: str | None = None, overrides: list[str] = (),
             sweep_dir: str | Path | None = None) -> Job:
    """A Job from a composed config: typed settings, the attention's label, where rows go."""
    typed = load(cfg)
    return Job(cfg=typed, run_dir=Path(typed.records_dir or run_dir),
               label=attention_label(choice, list(overrides), typed.attention),
               config_yaml=OmegaConf.to_yaml(cfg, resolve=True), sweep_dir=Path(sweep_dir) if sweep_dir else None)


def job_from_hydra(cfg: DictConfig) -> Job:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return make_job(cfg, hc.runtime.output_dir, choice=hc.runtime.choices.get("attention"),
                    overrides=list(hc.overrides.task), sweep_dir=hc.sweep.dir if multirun else None)


def main(cfg: DictConfig) -> list[Record]:
    """What ``run.py`` calls: one job, its rows written and summarised."""
    from .summary import print_summary

    install_signal_handlers()
    job = job_from_hydra(cfg)
    multirun = job.sweep_dir is not None
    if job.cfg.resume and not multirun:
        print("note: resume=true applies to sweeps (python run.py -m ...); a single run always measures", flush=True)
    try:
        records = run(job)
    except BadInput as e:
        if not multirun:
            _fail(f"error: {e}", 2)
        records = [unmeasured_row(job, "invalid", str(e))]  # in a sweep a bad case is a row, and the others go on
        _write_or_stop(records, job)
    except RowsNotWritten as e:
        _fail(f"error: {e}; rows written before are kept; stopping", 1)
    except KeyboardInterrupt as e:
        marked = getattr(e, "marked", None)
        where = f"this case is marked 'interrupted' in {marked}; " if marked else ""
        _fail(f"{interruption(e)}: {where}rows written before are kept", exit_code(e))
    except Exception as e:  # noqa: BLE001 - a sweep job that fails outside measuring is a row too
        if not multirun:
            raise
        records = [unmeasured_row(job, "error", failure(e, job.run_dir)[1])]
        _write_or_stop(records, job)
    if not multirun:  # in a sweep the callback prints one line per job under its progress display
        print_summary(records, job)
    return records


def _write_or_stop(records: list[Record], job: Job) -> None:
    try:
        _note(write_records(records, job.run_dir))
    except RowsNotWritten as e:
        _fail(f"error: {e}; rows written before are kept; stopping", 1)


def _fail(line: str, code: int) -> None:
    """One line on stderr, then exit: SystemExit passes through Hydra and stops a sweep."""
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code)
