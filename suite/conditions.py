"""Measuring conditions: how a timing was taken, and whether to believe it.

Around every timed loop the suite records the CPU threads torch used, the
CPUs this process may run on, the load average before and after, the wall
and CPU time of the loop, how much CPU other processes used meanwhile, and
on a GPU the clocks at the start and end, the lowest SM clock and the NVML
clock-event reasons seen while it ran, the other processes on the GPU and
the temperature. From these, one verdict per row (``timing_quality``), first
rule that applies, with every reason in ``timing_note``:

- ``throttled`` (GPU): NVML reported a thermal or hardware slowdown during
  the loop. The power cap and a lower SM clock under it are the normal state
  of a loaded GPU: the note says so, the verdict does not change.
- ``contended``: other processes used at least ``contention_cores`` CPU
  cores on average during the loop (from /proc/stat, less this process's own
  CPU time; where that is not available, the 1-minute load average before
  the loop exceeded the CPUs this process may use), or more torch threads
  than CPUs were asked for (or than Slurm allocated), or a Slurm job's CPU
  binding lets it run on CPUs given to other jobs, or another process
  computes on the same GPU.
- ``noisy``: the p10-p90 spread exceeds ``noise_pct`` percent of the p50.
- ``ok`` otherwise.

A flagged measurement is taken again, up to ``retries`` more times; the row
keeps the cleanest attempt (by verdict, then spread) and says which.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import torch

from . import progress
from .device import HELD_BACK, POWER_MANAGED, Nvml, reason_names
from .sweep.slurm_env import slurm_facts
from .measure import Timing

QUALITY = ("ok", "noisy", "contended", "throttled")  # best first


def cpu_affinity() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def set_threads(requested: int) -> int:
    """Set torch's CPU threads: ``requested``, or with 0 the CPUs in the affinity mask. Returns the count."""
    n = requested or cpu_affinity()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _busy_jiffies() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / hz, total / hz


def _load1() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


class GpuSampler:
    """Polls NVML while the loop runs: the lowest SM clock, the reasons seen, the hottest temperature."""

    def __init__(self, nvml: Nvml, period_s: float = 0.02):
        self.nvml, self.period_s = nvml, period_s
        self.min_sm, self.max_temp, self.bits, self.first, self.last = float("inf"), float("-inf"), 0, {}, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        """Only what changes during a loop: the SM clock, the temperature and the reason bits."""
        now = self.nvml.sm_clock_and_temp()
        if now is not None:
            self.min_sm, self.max_temp = min(self.min_sm, now[0]), max(self.max_temp, now[1])
        self.bits |= self.nvml.throttle_reasons() or 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    def __enter__(self):
        if self.nvml.handle is not None:
            self.first = self.nvml.clocks()
            self._sample()
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.nvml.handle is not None:
            self._stop.set()
            self._thread.join(timeout=2)
            self._sample()
            self.last = self.nvml.clocks()

    def columns(self) -> dict:
        if self.nvml.handle is None:
            return {}
        out = {"gpu_sm_clock_mhz_start": self.first.get("gpu_sm_clock_mhz"),
               "gpu_mem_clock_mhz_start": self.first.get("gpu_mem_clock_mhz"),
               "gpu_sm_clock_mhz_min": self.min_sm if self.min_sm != float("inf") else None,
               "gpu_throttle_reasons": ",".join(reason_names(self.bits)), **self.last}
        if self.max_temp != float("-inf"):
            out["gpu_temp_c"] = self.max_temp
        others = self.nvml.other_processes()
        if others is not None:
            out["gpu_other_processes"] = others
        return {k: v for k, v in out.items() if v is not None}


LOAD_WINDOW_S = 1.0  # /proc/stat counts 10 ms ticks: +-0.02 cores per CPU over 1 s


def observe(loop, device: torch.device, nvml: Nvml, window_s: float = LOAD_WINDOW_S) -> tuple[Timing, dict]:
    """Run ``loop()`` (the timed loop, returning a Timing) and record the conditions around it.

    Other processes' CPU load is the machine's busy time less this process's own
    CPU time over a window of at least ``window_s`` (a shorter loop is followed
    by an idle wait that completes the window), at most the CPUs that exist;
    ``window_s=0``: not measured (NaN)."""
    load_before, busy0, cpu0, w0 = _load1(), _busy_jiffies(), time.process_time(), time.perf_counter()
    with GpuSampler(nvml) as gpu:
        t = loop()
    short = window_s - (time.perf_counter() - w0)
    if short > 0 and busy0:
        time.sleep(short)
    busy1, cpu1, wall = _busy_jiffies(), time.process_time(), time.perf_counter() - w0
    cols = dict(threads=torch.get_num_threads(), cpu_affinity=cpu_affinity(), load_avg_before=load_before,
                load_avg_after=_load1(), timed_wall_s=t.total_s, timed_cpu_s=t.cpu_s, **gpu.columns())
    slurm = slurm_facts()
    if slurm["in_slurm"]:
        cols.update(slurm_cpus=slurm["cpus"], cpu_binding=slurm["binding"])
    if busy0 and busy1 and wall > 0 and window_s > 0:
        others = (busy1[0] - busy0[0]) - (cpu1 - cpu0)  # warmup included on both sides
        cols["other_cpu_load"] = min(float(os.cpu_count() or 1), max(0.0, others / wall))
    return t, cols


@dataclass(frozen=True)
class Limits:
    noise_pct: float = 20.0
    contention_cores: float = 0.5
    load_window_s: float = LOAD_WINDOW_S

    @classmethod
    def of(cls, cfg) -> Limits:
        """The limits a run's settings (``noise_pct``, ``contention_cores``, ``load_window_s``) set."""
        return cls(cfg.noise_pct, cfg.contention_cores, cfg.load_window_s)


def verdict(t: Timing, c: dict, device: torch.device, limits: Limits = Limits()) -> tuple[str, list[str]]:
    """(timing_quality, reasons) by the rules in the module docstring."""
    found: dict[str, list[str]] = {q: [] for q in QUALITY[1:]} | {"unmeasured": []}
    seen = str(c.get("gpu_throttle_reasons", "")).split(",")
    held = [r for r in seen if r in HELD_BACK]
    start, low = c.get("gpu_sm_clock_mhz_start"), c.get("gpu_sm_clock_mhz_min")
    fell = f"SM clock {start:.0f} -> {low:.0f} MHz" if start and low and low < 0.9 * start else ""
    if held:
        found["throttled"].append(f"NVML reported {', '.join(held)} during the loop" + (f"; {fell}" if fell else ""))
    elif fell or any(r in POWER_MANAGED for r in seen):  # normal power management: said, not flagged
        found["unmeasured"].append("power management: " + ", ".join(
            p for p in (fell, "sw_power_cap seen" if "sw_power_cap" in seen else "") if p) + " (not a slowdown)")
    if c.get("cpu_binding") == "loose":
        found["contended"].append(f"the CPU binding allows {c.get('cpu_affinity')} CPUs but Slurm allocated "
                                  f"{c.get('slurm_cpus')}: threads may run on CPUs given to other jobs")
    if c.get("slurm_cpus") and c.get("threads", 0) > c["slurm_cpus"]:
        found["contended"].append(f"threads={c['threads']} exceeds the {c['slurm_cpus']} CPUs Slurm allocated")
    others = c.get("other_cpu_load")
    if others is None and limits.load_window_s <= 0:
        found["unmeasured"].append("other processes' CPU load not measured (load_window_s=0)")
    if others is not None and others >= limits.contention_cores:
        found["contended"].append(f"other processes used {others:.1f} CPU cores during the loop")
    elif others is None and limits.load_window_s > 0 and c.get("load_avg_before", 0) > c.get("cpu_affinity", 1):
        found["contended"].append(f"load average {c['load_avg_before']:.1f} > {c['cpu_affinity']} CPUs before the loop")
    if c.get("threads", 0) > c.get("cpu_affinity", 1 << 30):
        found["contended"].append(f"threads={c['threads']} exceeds the {c['cpu_affinity']} CPUs this process may use")
    if c.get("gpu_other_processes", 0):
        found["contended"].append(f"{c['gpu_other_processes']} other process(es) on the GPU")
    spread = 100 * t.spread
    if spread > limits.noise_pct:
        found["noisy"].append(f"p10-p90 spread {above(spread, limits.noise_pct)}% of p50 > {limits.noise_pct:g}%")
    worst = next((q for q in reversed(QUALITY[1:]) if found[q]), "ok")
    return worst, [r for q in reversed(QUALITY[1:]) for r in found[q]] + found["unmeasured"]


def above(value: float, limit: float) -> str:
    """``value`` (known to exceed ``limit``) printed with the digits that show it: 20.4 > 20, never 20 > 20."""
    for digits in range(0, 4):
        text = f"{value:.{digits}f}"
        if float(text) > limit:
            return text
    return f"{value:.6g}"


def judged(loop, device: torch.device, nvml: Nvml, retries: int, limits: Limits = Limits()) -> tuple[Timing, dict]:
    """Time with ``loop`` until the verdict is ok or ``retries`` more attempts are spent; keep the cleanest."""
    attempts = []
    for i in range(1 + max(0, retries)):
        if i:
            time.sleep(0.5)  # a competitor that was finishing may be gone
        progress.say(f"timing, attempt {i + 1} of up to {1 + max(0, retries)}" +
                     (f" (#{i} was {attempts[-1][5]})" if attempts else ""))
        t, cols = observe(loop, device, nvml, limits.load_window_s)
        quality, reasons = verdict(t, cols, device, limits)
        attempts.append((QUALITY.index(quality), t.spread, i, t, cols, quality, reasons))
        if quality == "ok":
            break
    best = min(attempts)
    _, _, i, t, cols, quality, reasons = best
    note = "; ".join(reasons)
    if len(attempts) > 1:
        others = ", ".join(f"#{a[2] + 1} {a[5]}" for a in attempts if a is not best)
        note = "; ".join(n for n in [note, f"kept attempt {i + 1} of {len(attempts)} (others: {others})"] if n)
    return t, cols | dict(timing_quality=quality, timing_note=note, timing_attempts=len(attempts))
