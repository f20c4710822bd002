"""What a workload is: one module (a ``Workload`` subclass with
``@register_workload``) and one ``conf/workload/<name>.yaml``. It owns its
settings (the ``workload`` config node, typed by its ``Settings`` dataclass,
and any top-level group it reads, typed by ``groups``), its row columns
(``columns``), its summary columns, its directions, its run-folder name, its
one-line sweep report and its figures' facets. It describes a case, says why
it cannot run, builds its inputs and the zero-argument callable, and adds its
own measurements.

The job pipeline (``suite/job.py``) calls these steps in order for every
workload; the shared timing step (``Workload.measure``) times ``Built.fn``.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from .. import progress
from ..conditions import Limits, judged
from ..config import DIRECTIONS, Job, RunConfig, setting
from ..device import Nvml, Precision
from ..measure import peak_memory, sdpa_kernels, time_fn
from ..records import Col, first_line


@dataclass
class WorkloadSettings:
    """The ``workload`` config node every workload's ``Settings`` extends."""

    name: str = setting("layer", "the workload (conf/workload/): one registered in suite/workloads/ or given by "
                                 "`module`")
    module: str = setting("", "the Python module that registers this workload (empty: suite.workloads.<name>)",
                          identity=False)


@dataclass(frozen=True)
class Target:
    """A promise about one preset (``variant``) on a workload's rows of one precision, judged by
    ``python -m suite.targets`` and in the report."""

    what: str
    resolution: str
    kind: str  # "max_ms": p50 at most; "over": the fastest of ``against`` / this p50 at least; "max_mem_ratio"
    bound: float
    direction: str = "fwd"
    variant: str = "elfatt_fast"
    against: tuple[str, ...] = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
    dtype: str = "fp16"


@dataclass(frozen=True)
class Column:
    """One column of a workload's summary table: header, Record field, format."""

    header: str
    field: str
    fmt: str = ".3g"  # format spec; "" prints the value as text


@dataclass
class Case:
    """A workload's description of one case, made before anything runs."""

    facts: dict  # row columns known before running: size (H, W px), grid, dim, heads, patch_size, model...
    data: Any  # what the later steps need (a module, a model plan...)
    notes: list = field(default_factory=list)  # facts for the row's reason (e.g. which weights were loaded)


@dataclass
class Built:
    """Inputs and the callable to time, built outside the timed region."""

    fn: Callable[[], torch.Tensor] | None
    inputs: tuple = ()
    flops_analytic: float = float("nan")
    items_per_call: int = 1
    facts: dict = field(default_factory=dict)  # columns known once built (params, FLOPs per image...)
    started: float = 0.0  # perf_counter when building began (for whole-job wall times)
    grad_out: torch.Tensor | None = None  # the fixed output gradient of a backward


@dataclass
class Measured:
    values: dict
    notes: list[str]
    status: str = "ok"


class Workload:
    """Base class. Subclasses set ``name``, ``Settings``, ``columns`` and ``summary``,
    and implement ``describe`` and ``build``; the other steps have defaults."""

    name: ClassVar[str] = ""
    #: the ``workload`` node's schema (a dataclass extending WorkloadSettings)
    Settings: ClassVar[type] = WorkloadSettings
    #: top-level config groups this workload reads, with their schemas (e.g. {"model": ModelConfig})
    groups: ClassVar[dict[str, type]] = {}
    #: the columns its rows add to the core ones
    columns: ClassVar[tuple[Col, ...]] = ()
    summary: ClassVar[tuple[Column, ...]] = ()
    directions: ClassVar[tuple[str, ...]] = DIRECTIONS
    #: the report draws one panel per combination of these columns' values
    facets: ClassVar[tuple[str, ...]] = ("workload", "direction", "dtype")
    #: (column, "lower" or "higher" is better): what the report's trade-off figure plots against speed
    quality: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: promises judged on its rows (``suite.targets``)
    targets: ClassVar[tuple] = ()
    #: what ``extras`` measures, for the note when it fails
    extras_name: ClassVar[str] = "accuracy"
    #: True when the shared timing step times ``Built.fn`` and FLOPs are counted on it.
    timed: ClassVar[bool] = True

    # -- settings and names ----------------------------------------------------
    def check(self, cfg: RunConfig) -> None:
        """Cross-setting rules the schema cannot say (BadInput); by default the direction."""
        from ..config import BadInput

        if cfg.direction not in self.directions:
            raise BadInput(f"direction={cfg.direction} is not valid for workload={self.name}; valid: "
                           f"{', '.join(self.directions)}")

    def run_name(self, cfg: RunConfig) -> str:
        """A single run's folder name (after the time stamp): what ran."""
        parts = [self.name, str(cfg.attention.get("name")), str(cfg.resolution)]
        return "_".join(parts + ([cfg.direction] if cfg.direction != "fwd" else []))

    def line(self, row) -> str:
        """A finished job in one short line (sweep progress): the case and its outcome."""
        label = row.get("variant") or row.get("attention")
        direction = f" {row.get('direction')}" if row.get("direction") not in ("fwd", None, "") else ""
        head = f"{label} {self.name} {row.get('dtype')} {row.get('resolution')}px{direction}"
        lat = row.get("latency_ms_p50")
        if row.get("status") == "ok" and isinstance(lat, float) and math.isfinite(lat):
            return f"{head}: {lat:.3g} ms"
        return f"{head}: {row.get('status')}"

    # -- the steps -------------------------------------------------------------
    def describe(self, job: Job) -> Case:
        """Validate the settings (BadInput naming the valid values) and describe the case."""
        raise NotImplementedError

    def reasons(self, case: Case, job: Job, device: torch.device, precision: Precision) -> list:
        """Why this case cannot run here: ``attentions.Reason``-like (kind, text) pairs,
        kinds ``unavailable`` and ``unsupported`` (``invalid`` is raised as BadInput in describe)."""
        return []

    def memory_estimate(self, case: Case, job: Job, precision: Precision) -> int | None:
        """A lower bound on the bytes one call needs, or None when unknown."""
        return None

    def precision_of(self, job: Job, device: torch.device) -> Precision:
        from ..device import resolve_precision

        return resolve_precision(job.cfg.precision.name, device)

    def build(self, case: Case, job: Job, device: torch.device, precision: Precision) -> Built:
        raise NotImplementedError

    def measure(self, case: Case, built: Built, job: Job, device: torch.device) -> Measured:
        """The shared timing step: a first call (compiles, surfaces errors), the
        timed loop with NVML readings, peak memory of one call, the SDPA kernels
        that ran; then the workload's ``extras`` on the first call's output."""
        cfg = job.cfg
        progress.say("first call (compiles, warms caches)")
        out = built.fn()
        status, notes = "ok", []
        if not all_finite(out):
            status, notes = "error", ["output has non-finite values"]
        nvml = Nvml(device)

        def loop():
            return time_fn(built.fn, device, warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s,
                           flush_l2=cfg.flush_l2, mode=cfg.timing, energy=nvml.energy_mj)

        t, m = judged(loop, device, nvml, cfg.retries, Limits.of(cfg))
        if t.note:
            notes.append(t.note)
        seconds = t.p50_ms / 1e3
        m.update(latency_ms_p10=t.p10_ms, latency_ms_p50=t.p50_ms, latency_ms_p90=t.p90_ms, repeats=t.repeats,
                 throughput_per_s=built.items_per_call / seconds, tflops_per_s=built.flops_analytic / seconds / 1e12)
        if t.energy_j == t.energy_j:
            m.update(energy_j=t.energy_j, avg_power_w=t.energy_j / t.busy_s if t.busy_s > 0 else float("nan"))
        progress.say("peak memory of one call")
        mem = peak_memory(built.fn, device)
        m.update(peak_mem_mib=mem.peak_mib, peak_extra_mem_mib=mem.extra_mib, mem_method=mem.method)
        saved = built.facts.get("saved_mib", float("nan"))
        if device.type != "cuda" and cfg.direction == "bwd" and saved == saved:
            # the CPU profiler sees the call's own allocations; the saved tensors were made before it
            m.update(peak_mem_mib=mem.peak_mib + saved, mem_method=mem.method + "+saved_tensors")
        m["sdpa_kernels"] = ",".join(sorted(sdpa_kernels(built.fn)))
        try:  # accuracy, shares, fidelity: annotations that never cost the measurement above
            progress.say(f"{self.extras_name} (float64 references)")
            extra, extra_notes = self.extras(case, built, out, job, device)
        except Exception as e:  # noqa: BLE001
            if device.type == "cuda":
                torch.cuda.empty_cache()
            extra, extra_notes = {}, [f"{self.extras_name} not measured: {first_line(e)}"]
        return Measured(m | extra, notes + extra_notes, status)

    def extras(self, case: Case, built: Built, out: torch.Tensor, job: Job, device: torch.device
               ) -> tuple[dict, list[str]]:
        """Measurements of this workload beyond the shared ones (accuracy, shares...), and notes."""
        return {}, []

    def run_info(self, case: Case) -> dict[str, str]:
        """Facts the attention(s) reported while running."""
        return {}

    def counted_columns(self, counted: float, job: Job) -> dict:
        """Columns derived from the counted FLOPs (e.g. per image)."""
        return {}

    def compulsory_bytes(self, row, itemsize: int) -> float:
        """Bytes one call must move at least (for the roofline); NaN when not counted."""
        return math.nan


# -- helpers the workloads share -------------------------------------------------
def autocast_context(device: torch.device, precision: Precision):
    if precision.autocast:
        return torch.autocast(device.type, dtype=precision.compute_dtype)
    return contextlib.nullcontext()


def seeded_randn(shape, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Seeded on the CPU so CPU and GPU runs see the same data."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def inference(fn: Callable[[], torch.Tensor], device: torch.device, precision: Precision) -> Callable:
    """``fn`` under no_grad, and autocast when the precision asks for it."""

    def call():
        with torch.no_grad(), autocast_context(device, precision):
            return fn()

    return call




@dataclass
class Directed:
    """The timed call for a direction, and what the backward needs to be checked."""

    fn: Callable
    leaves: list  # the tensors whose gradients the backward computes
    grad_out: torch.Tensor | None = None
    saved_mib: float = float("nan")  # tensors the forward saved for the backward


def directed(forward: Callable[[], torch.Tensor], leaves: list, direction: str, device: torch.device,
             precision: Precision, seed: int) -> Directed:
    """``fwd``: the forward under no_grad. ``bwd``: the forward runs once here,
    outside the timed call, and keeps its graph; the call is the backward alone,
    with a fixed (seeded) output gradient. ``fwd_bwd``: both in every call.
    The backward computes the gradients of ``leaves`` (inputs and weights)."""
    if direction == "fwd":
        return Directed(inference(forward, device, precision), leaves)
    for t in leaves:
        t.requires_grad_(True)

    def run_forward():
        with torch.enable_grad(), autocast_context(device, precision):
            return forward()

    saved: dict[int, int] = {}

    def keep(t):  # count each storage the graph keeps once
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = run_forward()
    grad_out = seeded_randn(tuple(out.shape), seed + 99, device, out.dtype)

    def backward(y, keep: bool):
        # .backward into fresh .grad tensors (as after zero_grad(set_to_none=True)); autograd.grad would do,
        # but FlopCounterMode cannot count it through modules
        for t in leaves:
            t.grad = None
        torch.autograd.backward(y, grad_out, retain_graph=keep, inputs=leaves)
        return [t.grad for t in leaves]

    if direction == "bwd":
        def fn():
            return backward(out, True)
    else:
        def fn():
            return backward(run_forward(), False)
    return Directed(fn, leaves, grad_out, sum(saved.values()) / 2**20)


def all_finite(out) -> bool:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return all(bool(torch.isfinite(t).all()) for t in outs if t is not None)
