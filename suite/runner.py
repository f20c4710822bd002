"""One job: config -> checks -> workload -> measurements -> record -> files + summary.

Bad settings raise ``BadInput`` (one line, exit 2 in a single run; an
``invalid`` row in a sweep). Anything that goes wrong while measuring becomes
a row with its status and reason; what was measured before is kept.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import attentions

from . import accuracy as acc
from .config import TASKS, WORKLOADS, BadInput, check_choice, grid_of
from .device import Nvml, dtype_unsupported_reason, environment, resolve_device, resolve_precision
from .failures import failure
from .measure import peak_memory, sdpa_kernels, time_fn, try_count_flops
from .records import Record, write_records
from .workloads import prepare


def attention_options(cfg: DictConfig) -> dict:
    """The attention's constructor options from the config (everything but its name)."""
    opts = OmegaConf.to_container(cfg.attention, resolve=True)
    opts.pop("name", None)
    return opts


def build_attention(cfg: DictConfig, hw: tuple[int, int]):
    """The attention module for ``cfg``, or BadInput naming the valid choices."""
    name = cfg.attention.get("name")
    try:
        module = attentions.create_attention(name, cfg.dim, cfg.heads, **attention_options(cfg))
        module.check_grid(hw)
    except ValueError as e:
        raise BadInput(str(e)) from None
    return module


def validate(cfg: DictConfig) -> tuple[int, int]:
    check_choice("task", cfg.task, TASKS)
    check_choice("workload", cfg.workload.name, WORKLOADS)
    for key in ("batch_size", "dim", "heads"):
        if cfg[key] < 1:
            raise BadInput(f"{key}={cfg[key]} must be a positive integer")
    return grid_of(cfg.resolution, cfg.patch_size)


def base_fields(cfg: DictConfig, hw, device: torch.device, dtype_name: str, env: dict, **overrides) -> dict:
    """The identifying columns of a row; ``overrides`` replace or add columns
    (the model workload's own grid, width and model facts)."""
    return dict(
        attention=str(cfg.attention.get("name")),
        workload=cfg.workload.name,
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
        config=OmegaConf.to_yaml(cfg, resolve=True),
        **{k: v for k, v in env.items() if k in Record.__dataclass_fields__ and k != "device_name"},
    ) | overrides


def measure_case(cfg: DictConfig, module, hw, device: torch.device, precision, base: dict, run_dir: Path) -> Record:
    """Measure one case. Never raises for problems of the case itself."""
    status, reason, m = "ok", "", {}
    notes: list[str] = []  # annotations of an ok row (a skipped check, an uncountable op)
    try:
        missing = module.unavailable_reasons(device)
        if missing:
            return Record(**base, status="unavailable", reason="; ".join(missing))
        reasons = [r for r in [dtype_unsupported_reason(device, precision.compute_dtype)] if r]
        reasons += module.unsupported_reasons(device=device, dtype=precision.compute_dtype, hw=hw, batch=cfg.batch_size)
        if reasons:
            return Record(**base, status="unsupported", reason="; ".join(reasons))
        torch.manual_seed(cfg.seed)
        prep = prepare(cfg.workload.name, module, batch=cfg.batch_size, hw=hw, device=device,
                       precision=precision, seed=cfg.seed)
        m["flops_analytic"] = float(prep.flops_analytic)
        out = prep.fn()  # first call: surfaces unsupported / unavailable / OOM before timing
        if not torch.isfinite(out).all():
            status, reason = "error", "output has non-finite values"
        nvml = Nvml(device)
        e0 = nvml.energy_mj()
        t = time_fn(prep.fn, device, warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s,
                    flush_l2=cfg.flush_l2)
        e1 = nvml.energy_mj()
        m.update(latency_ms_p10=t.p10_ms, latency_ms_p50=t.p50_ms, latency_ms_p90=t.p90_ms, repeats=t.repeats,
                 throughput_per_s=prep.items_per_call / (t.p50_ms / 1e3),
                 tflops_per_s=prep.flops_analytic / (t.p50_ms / 1e3) / 1e12)
        m.update(nvml.clocks())
        if e0 is not None and e1 is not None and t.total_s > 0:
            m.update(energy_j=(e1 - e0) / 1e3, avg_power_w=(e1 - e0) / 1e3 / t.total_s)
        mem = peak_memory(prep.fn, device)
        m.update(peak_mem_mib=mem.peak_mib, peak_extra_mem_mib=mem.extra_mib, mem_method=mem.method)
        m["sdpa_kernels"] = ",".join(sorted(sdpa_kernels(prep.fn)))
        if cfg.accuracy:
            if hw[0] * hw[1] > cfg.accuracy_max_tokens:
                notes.append(f"accuracy skipped: {hw[0] * hw[1]} tokens > accuracy_max_tokens={cfg.accuracy_max_tokens}")
            else:
                a = _accuracy(module, out, prep, hw, cfg.workload.name)
                m.update(rel_err_vs_exact=a.rel_err_vs_exact, rel_err_vs_fp64=a.rel_err_vs_fp64,
                         cos_sim_vs_exact=a.cos_sim_vs_exact)
        info = module.run_info()
        m["run_info"] = json.dumps(info, sort_keys=True) if info else ""
        if cfg.flops_count:  # last: a counter that fails to trace can leave torch.compile's caches unusable
            m["flops_counted"], note = try_count_flops(prep.fn)
            notes.append(note)
        reason = "; ".join(n for n in [reason, *notes] if n)
    except BaseException as e:  # noqa: BLE001 - a failed case is a row, not a lost sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        status, reason = failure(e, run_dir)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Record(**base, status=status, reason=reason, **m)


def _accuracy(module, out, prep, hw, workload):
    try:
        return acc.accuracy(module, out, prep.inputs, hw, workload)
    except attentions.Unsupported:
        # The float64 copy cannot run on this device (e.g. an SDPA backend
        # pinned to fp16 kernels): evaluate the references on the CPU.
        cpu_inputs = tuple(t.cpu() for t in prep.inputs)
        return acc.accuracy(module.cpu(), out.cpu(), cpu_inputs, hw, workload)


def run_job(cfg: DictConfig, run_dir: Path) -> list[Record]:
    """Validate, measure and write one job's records. Raises BadInput on bad settings."""
    from . import sweep  # resume and skip-before-launch (sweep imports runner lazily)

    resumed = sweep.resumed_records(cfg, run_dir)
    if resumed:
        return resumed  # resume=true: this case has an ok row already; nothing measured or written
    if cfg.task == "train_proxy":
        from .train_proxy import run_proxy_job

        return run_proxy_job(cfg, run_dir)
    if cfg.task == "measure" and cfg.workload.name == "model":
        from .model_workload import run_model_job

        return run_model_job(cfg, run_dir)
    hw = validate(cfg)
    torch.manual_seed(cfg.seed)  # the weights too: a rerun measures the same module
    module = build_attention(cfg, hw)
    device = resolve_device(cfg.device.name)
    precision = resolve_precision(cfg.precision.name, device)
    env = environment(device)
    base = base_fields(cfg, hw, device, precision.name, env)
    skipped = sweep.skip_record(cfg, module, hw, device, precision, base)
    records = [skipped or measure_case(cfg, module, hw, device, precision, base, run_dir)]
    write_records(records, run_dir)
    return records


def invalid_record(cfg: DictConfig, message: str) -> Record:
    """A row for a sweep job whose settings are invalid (it is not measured)."""
    res, patch = cfg.resolution, cfg.patch_size
    g = res // patch if patch > 0 else 0
    base = base_fields(cfg, (g, g), torch.device("cpu"), str(cfg.precision.name), {})
    base["device"] = str(cfg.device.name)
    try:  # say where the case would have run, so the row groups with its sweep's device
        device = resolve_device(cfg.device.name)
        base = base_fields(cfg, (g, g), device, resolve_precision(cfg.precision.name, device).name,
                            environment(device))
    except Exception:  # noqa: BLE001 - e.g. device=cuda without a GPU: keep the settings as given
        pass
    return Record(**base, status="invalid", reason=message)


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_summary(records: list[Record], run_dir: Path) -> None:
    """A short readable table of the job's rows, then where the files are."""
    if any(r.model or r.proxy_task for r in records):
        from .model_workload import print_model_summary

        return print_model_summary(records, run_dir)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{records[0].device_name} ({records[0].device}), torch {records[0].torch_version}")
    cols = ["attention", "workload", "res", "tokens", "batch", "dtype", "status", "p50 ms", "p10-p90 ms",
            "img/s", "TFLOP/s", "peak MiB", "rel err vs exact", "rel err vs fp64"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("attention", "workload", "dtype", "status") else "right")
    for r in records:
        table.add_row(
            r.attention, r.workload, str(r.resolution), str(r.tokens), str(r.batch_size), r.dtype, r.status,
            _fmt(r.latency_ms_p50, ".3f"), f"{_fmt(r.latency_ms_p10, '.3f')}-{_fmt(r.latency_ms_p90, '.3f')}",
            _fmt(r.throughput_per_s, ".1f"), _fmt(r.tflops_per_s, ".3f"), _fmt(r.peak_mem_mib, ".1f"),
            _fmt(r.rel_err_vs_exact, ".2e"), _fmt(r.rel_err_vs_fp64, ".2e"),
        )
    console = Console(width=200)
    console.print(table)
    for r in records:
        if r.reason:
            console.print(f"[{r.status}] {r.reason}", markup=False)
    console.print(f"records: {run_dir / 'records.parquet'} and records.csv in {run_dir}", markup=False, soft_wrap=True)
