"""The one job pipeline, for every workload:

    type the settings -> describe -> reasons (unavailable / unsupported / skipped)
                      -> build -> measure -> record -> write

Bad settings raise ``BadInput`` (one line, exit 2 in a single run; an
``invalid`` row in a sweep). Anything that goes wrong while measuring becomes
a row with its status and reason (``measure_case``, the one place that turns
a failure into a row); what was measured before is kept. SIGTERM and SIGHUP
are handled like Ctrl-C: the running case is marked ``interrupted``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from . import progress
from .conditions import cpu_affinity, set_threads
from .config import (
    BadInput, Job, RunConfig, attention_label, canonical, case_dirname, identity_of, load, parse_resolution, run_id,
    typed, vit_batch,
)
from .device import dtype_unsupported_reason, environment, resolve_device
from .flops import try_count_flops
from .measure import timing_unsupported
from .records import Record, RowsNotWritten, base_fields, check_writable, failure, unmeasured_row, write_records
from .sweep.resume import resumed_record, skip_reason
from .workloads import Case, Workload, get_workload


# -- settings -----------------------------------------------------------------------
def workload_of(cfg: RunConfig) -> Workload:
    node = cfg.workload if isinstance(cfg.workload, dict) else dataclasses.asdict(cfg.workload)
    return get_workload(str(node.get("name")), str(node.get("module") or ""))


def type_workload(cfg: RunConfig) -> Workload:
    """Type the workload node and the groups the workload reads with its schemas (BadInput on a bad value)."""
    if cfg.task is not None:
        raise BadInput(f"task={cfg.task} was removed; choose a workload instead (workload={cfg.task}, if it is one)")
    wl = workload_of(cfg)
    if isinstance(cfg.workload, dict):
        cfg.workload = typed(cfg.workload, wl.Settings, "workload.")
    for group, schema in wl.groups.items():
        if not dataclasses.is_dataclass(getattr(cfg, group)):
            setattr(cfg, group, typed(getattr(cfg, group), schema, f"{group}."))
    parse_resolution(cfg.resolution)
    wl.check(cfg)
    return wl


def make_job(cfg: DictConfig, run_dir: str | Path, *, choice: str | None = None, overrides: list[str] = (),
             sweep_dir: str | Path | None = None) -> Job:
    """A Job from a composed config: typed settings (the workload's too), the attention's label,
    where rows go. BadInput for any bad setting."""
    run = load(cfg)
    type_workload(run)
    return Job(cfg=run, run_dir=Path(run.records_dir or run_dir), label=attention_label(choice, list(overrides),
                                                                                         run.attention),
               config_yaml=OmegaConf.to_yaml(cfg, resolve=True), sweep_dir=Path(sweep_dir) if sweep_dir else None)


def raw_job(cfg: DictConfig, run_dir: str | Path, *, choice: str | None = None, overrides: list[str] = (),
            sweep_dir: str | Path | None = None) -> Job:
    """A Job for a row that says why the settings are bad: every value that can be read, defaults elsewhere."""
    run = RunConfig()
    try:
        raw = OmegaConf.to_container(cfg, resolve=False)
    except Exception:  # noqa: BLE001
        raw = {}
    for f in dataclasses.fields(RunConfig):
        value = raw.get(f.name)
        if isinstance(value, (str, int, float, bool)) and not (isinstance(value, str) and "${" in value):
            setattr(run, f.name, value)
    run.attention = raw.get("attention") if isinstance(raw.get("attention"), dict) else {"name": "?"}
    run.workload = raw.get("workload") if isinstance(raw.get("workload"), dict) else {"name": "?"}
    for f in ("precision", "device"):
        node = raw.get(f)
        if isinstance(node, dict) and isinstance(node.get("name"), str):
            getattr(run, f).name = node["name"]
    label = attention_label(choice, list(overrides), run.attention)
    return Job(run, Path(run.records_dir if isinstance(run.records_dir, str) and run.records_dir else run_dir),
               label, "", Path(sweep_dir) if sweep_dir else None)


def identity(job: Job, wl: Workload, device_type: str | None, precision_name: str | None,
             threads: int | None) -> dict:
    """Every setting that changes what is measured (``identity`` metadata in suite/config.py);
    settings that only change how long or how often (repeats, warmup, retries, limits,
    folders) are not part of it. None where the value is only known where the job runs."""
    cfg = job.cfg
    ident = {k: v for k, v in identity_of(cfg).items() if k not in ("model", "proxy", "precision", "device")}
    ident.update(precision=precision_name, device=device_type, threads=threads,
                 resolution=list(parse_resolution(cfg.resolution)), workload=identity_of(cfg.workload))
    for group in wl.groups:
        ident[group] = identity_of(getattr(cfg, group))
    return ident


def case_identity(job: Job, wl: Workload, device: torch.device, precision_name: str) -> str:
    """The case a row measures, as one JSON (the ``case`` column)."""
    return canonical(identity(job, wl, device.type, precision_name, job.cfg.threads or cpu_affinity()))


def planned_identity(job: Job) -> dict:
    """The case as the machine that submits a job can know it: device, precision and
    threads are None (any) where they are decided on the node (auto, 0)."""
    cfg = job.cfg
    return identity(job, workload_of(cfg), None if cfg.device.name == "auto" else cfg.device.name,
                    None if cfg.precision.name == "auto" else cfg.precision.name, cfg.threads or None)


def same_case(case_json: str, planned: dict) -> bool:
    """Whether a row's ``case`` is the ``planned`` case (None in ``planned`` matches anything)."""
    try:
        case = json.loads(case_json)
    except (TypeError, ValueError):
        return False
    want = json.loads(canonical(planned))
    return set(case) == set(want) and all(v is None or case[k] == v for k, v in want.items())


# -- measuring --------------------------------------------------------------------
def measure_case(wl: Workload, case: Case, job: Job, device: torch.device, precision, base: dict) -> Record:
    """Measure one case. Never raises for problems of the case itself."""
    values: dict = {}
    notes: list[str] = list(case.notes)
    status = "ok"
    try:
        found = wl.reasons(case, job, device, precision)
        missing = [r.text for r in found if r.kind == "unavailable"]
        if missing:
            return Record(**base, status="unavailable", reason="; ".join(dict.fromkeys(missing)))
        reasons = [dtype_unsupported_reason(device, precision.compute_dtype),
                   timing_unsupported(job.cfg.timing, device) if wl.timed else "",
                   *(r.text for r in found if r.kind == "unsupported")]
        reasons = [r for r in reasons if r]
        if reasons:
            return Record(**base, status="unsupported", reason="; ".join(dict.fromkeys(reasons)))
        progress.say("building the inputs")
        built = wl.build(case, job, device, precision)
        values.update(built.facts, flops_analytic=built.flops_analytic)
        measured = wl.measure(case, built, job, device)
        values.update(measured.values)
        notes += measured.notes
        status = measured.status
        info = wl.run_info(case)
        values["run_info"] = json.dumps(info, sort_keys=True) if info else ""
        values["impl_ran"] = impl_ran(info, values.get("sdpa_kernels", ""))
        if wl.timed and job.cfg.flops_count:  # last: a counter that fails to trace can spoil torch.compile's caches
            if "triton" in values["impl_ran"]:  # the counter sees torch ops only: a partial count would mislead
                notes.append("flops_counted not countable: FlopCounterMode cannot see Triton kernels "
                             "(flops_analytic counts them)")
            else:
                progress.say("counting FLOPs (FlopCounterMode)")
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
    record = Record(**(base | {"status": status} | values))  # measured values over the environment's
    record, note = record.checked(wl.columns, f"workload {wl.name}")
    record["reason"] = "; ".join(n for n in [*notes, note] if n)
    return record


def impl_ran(info: dict, sdpa_kernels: str) -> str:
    """The path that ran: what the attention(s) reported (``impl_ran``, or per stage
    ``stage<k>.impl_ran``), SDPA's entry made precise by the kernels the profiler saw."""
    found = [str(v) for k, v in sorted(info.items()) if k == "impl_ran" or k.endswith(".impl_ran")]
    paths = list(dict.fromkeys(found))
    if sdpa_kernels:
        paths = [f"sdpa:{sdpa_kernels}" if p == "sdpa" else p for p in paths] or [f"sdpa:{sdpa_kernels}"]
    return ",".join(paths)


def run(job: Job) -> list[Record]:
    """Measure and write one job's rows. Raises BadInput on bad settings,
    RowsNotWritten when the rows cannot be written (checked before measuring too)."""
    wl = type_workload(job.cfg)
    check_writable(job.run_dir)
    set_threads(job.cfg.threads)
    case = wl.describe(job)
    device = resolve_device(job.cfg.device.name)
    precision = wl.precision_of(job, device)
    env = environment(device)
    base = base_fields(job, case.facts, device, precision.name, env, case_identity(job, wl, device, precision.name))
    resumed = resumed_record(job, base)
    if resumed is not None:
        return [resumed]  # resume: this case has an ok row already; nothing measured or written
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


# -- signals ---------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM from a scheduler, SIGHUP), handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def on_signal(signum, _frame) -> None:
    raise Terminated(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the run like Ctrl-C does (main thread only). A handler someone
    else installed first is left in place: in a Slurm job the launcher's own handler ends the
    job and the launcher writes the row with Slurm's reason (cancelled, timeout, preempted)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, on_signal):
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


# -- the entry ---------------------------------------------------------------------
def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore and the resolvers the configs use
    (called by run.py and the tests, not at import)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    for name, fn in (("case_dir", case_dirname), ("run_name", run_name), ("vit_batch", vit_batch),
                     ("run_id", run_id)):
        OmegaConf.register_new_resolver(name, fn, replace=True)


def run_name(_root_) -> str:
    """A single run's folder name, said by its workload (made safe for a path)."""
    import re

    try:
        node = _root_.workload
        name = get_workload(str(node.name), str(node.get("module", "") or "")).run_name(_root_)
    except Exception:  # noqa: BLE001 - a bad setting is reported by the job, in one line
        name = "run"
    return re.sub(r"[^A-Za-z0-9=,._+-]+", "_", name).strip("._")[:80] or "run"


def job_from_hydra(cfg: DictConfig, make=make_job) -> Job:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return make(cfg, hc.runtime.output_dir, choice=hc.runtime.choices.get("attention"),
                overrides=list(hc.overrides.task), sweep_dir=hc.sweep.dir if multirun else None)


def main(cfg: DictConfig) -> list[Record]:
    """What ``run.py`` calls: one job, its rows written and summarised."""
    from .summary import print_summary

    install_signal_handlers()
    try:
        job = job_from_hydra(cfg)
    except BadInput as e:
        job = job_from_hydra(cfg, raw_job)
        if job.sweep_dir is None:
            _fail(f"error: {e}", 2)
        records = [unmeasured_row(job, "invalid", str(e))]  # in a sweep a bad case is a row, and the others go on
        _write_or_stop(records, job)
        return records
    multirun = job.sweep_dir is not None
    if not multirun:
        progress.enable(f"{job.label} {job.cfg.resolution}")
    if job.cfg.resume != "false" and not multirun:
        print("note: resume applies to sweeps (python run.py -m ...); a single run always measures", flush=True)
    try:
        records = run(job)
    except BadInput as e:
        if not multirun:
            _fail(f"error: {e}", 2)
        records = [unmeasured_row(job, "invalid", str(e))]
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
    progress.clear()
    if not multirun:  # in a sweep the callback prints one line per job under its progress display
        try:
            print_summary(records, job)
            sys.stdout.flush()
        except OSError as e:  # stdout full or closed: the rows are written; say so once, on stderr
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            _fail(f"error: the summary could not be printed ({e.strerror or e}); the rows are written in "
                  f"{job.run_dir}", 1)
    return records


def _write_or_stop(records: list[Record], job: Job) -> None:
    try:
        _note(write_records(records, job.run_dir))
    except RowsNotWritten as e:
        _fail(f"error: {e}; rows written before are kept; stopping", 1)


def _note(note: str) -> None:
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)


def _fail(line: str, code: int) -> None:
    """One line on stderr, then exit: SystemExit passes through Hydra and stops a sweep."""
    progress.clear()
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code)
