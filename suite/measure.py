"""Timing, peak memory and FLOPs of a zero-argument callable.

Inputs are built by the workload, outside the callable; nothing here allocates
inside the timed region except what the callable itself allocates.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch

Fn = Callable[[], object]


TIMINGS = ("eager", "cuda_graph", "kernels")


class CaseUnsupported(RuntimeError):
    """This way of measuring cannot run this case here (a row with status ``unsupported``)."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


@dataclass(frozen=True)
class Timing:
    p10_ms: float
    p50_ms: float
    p90_ms: float
    repeats: int
    total_s: float  # wall time of the timed loop
    cpu_s: float  # CPU time this process spent in the timed loop, all threads
    energy_j: float = math.nan  # of the timed calls alone (see time_fn)
    busy_s: float = math.nan  # the timed calls' summed durations
    note: str = ""  # e.g. the repeat cap cut the loop short of min_time_s

    @classmethod
    def of(cls, samples_ms: list[float], total_s: float, cpu_s: float, **more) -> Timing:
        """p10, median and p90 of the samples (ms), with the loop's wall and CPU seconds."""
        s = sorted(samples_ms)
        return cls(quantile(s, 0.1), statistics.median(s), quantile(s, 0.9), len(s), total_s, cpu_s, **more)

    @property
    def spread(self) -> float:
        """(p90 - p10) / p50; 0 when the p50 is 0."""
        return (self.p90_ms - self.p10_ms) / self.p50_ms if self.p50_ms > 0 else 0.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def quantile(sorted_ms: list[float], q: float) -> float:
    """Linear-interpolated quantile of an ascending list."""
    pos = q * (len(sorted_ms) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


L2_SCRUB_BYTES = 256 * 2**20  # larger than any current GPU's L2 (H100: 50 MB)


def timing_unsupported(mode: str, device: torch.device) -> str:
    """Why timing ``mode`` cannot run on ``device`` ("" when it can)."""
    if mode not in TIMINGS:
        return f"timing={mode!r} is not a timing mode; valid: {', '.join(TIMINGS)}"
    if mode != "eager" and device.type != "cuda":
        return f"timing={mode} needs a CUDA device (CUDA graphs / GPU kernel times); the device is {device.type}"
    return ""


def capture_graph(fn: Fn, device: torch.device) -> Fn:
    """``fn`` captured as a CUDA graph (after two calls on a side stream, as
    torch recommends); returns the replay. CaseUnsupported when capture fails."""

    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as e:  # noqa: BLE001 - a host sync, a CPU tensor or a dynamic shape inside the call
        raise CaseUnsupported(f"timing=cuda_graph: this call cannot be captured as a CUDA graph "
                              f"({_first_line(e)[:200]})") from None
    return graph.replay


def kernel_samples(fn: Fn, device: torch.device, repeats: int, flush_l2: bool) -> list[float]:
    """Per call, the sum of its GPU activity times (kernels, copies, fills; ms), all
    calls in one profiler session. Each call runs alone between two syncs, inside
    a marked host range, after an L2 scrub outside the range; a GPU activity
    belongs to the call whose range holds its start. CaseUnsupported when the
    profiler saw no GPU activity inside the calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    scrub = torch.empty(L2_SCRUB_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
    with _quiet_fd2(), profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for i in range(repeats):
            if scrub is not None:
                scrub.zero_()
            _sync(device)
            with record_function(f"suite_call_{i}"):
                fn()
                _sync(device)
    events = prof.profiler.kineto_results.events()
    return calls_gpu_ms(events, repeats, DeviceType)


def calls_gpu_ms(events, repeats: int, device_type) -> list[float]:
    """``kernel_samples``' attribution of GPU activities to the marked calls (ms per call)."""
    import bisect

    calls = sorted((e.start_ns(), e.start_ns() + e.duration_ns()) for e in events
                   if e.device_type() == device_type.CPU and e.name().startswith("suite_call_"))
    starts = [c[0] for c in calls]
    samples = [0.0] * len(calls)
    for e in events:
        if e.device_type() != device_type.CUDA:
            continue
        k = bisect.bisect_right(starts, e.start_ns()) - 1
        if k >= 0 and e.start_ns() <= calls[k][1]:
            samples[k] += e.duration_ns() / 1e6
    if len(calls) != repeats or not all(samples):
        seen = sum(1 for s in samples if s)
        raise CaseUnsupported(f"timing=kernels: the profiler saw GPU activity in {seen} of {repeats} timed calls "
                          f"(none: nothing ran on the GPU, or the profiler cannot see it here)")
    return samples


KERNEL_REPEATS = 200  # timing=kernels: profiled calls at most
MAX_REPEATS = 100_000  # a loop of cheaper calls than min_time_s / MAX_REPEATS times fewer seconds, and says so
MAX_ROUNDS = 20  # repeats=0: rounds of calls until min_time_s has passed (a slow machine may need a few)


def time_fn(fn: Fn, device: torch.device, *, warmup: int = 3, repeats: int = 0, min_time_s: float = 1.0,
            max_repeats: int = MAX_REPEATS, flush_l2: bool = True, mode: str = "eager",
            energy: Callable[[], float | None] | None = None) -> Timing:
    """Median and spread of ``fn``'s latency.

    ``eager``: CUDA events around each call (device time of that call) on a
    GPU, perf_counter on the CPU. ``cuda_graph``: the call captured after
    warmup and replayed, so launch overhead is gone; the L2 scrub stays
    outside the graph. ``kernels``: the sum of one call's GPU kernel times
    from the profiler, one profiler session for all repeats, L2 scrubbed
    before each call. ``repeats=0`` picks the count from a steady-state
    estimate taken after the warmup (calls until a tenth of ``min_time_s``
    has passed): enough calls to fill ``min_time_s``, at least 5, at most
    ``max_repeats`` (the Timing's note says when that cap cut the loop
    short); where the estimate was too slow (a busy machine), further rounds
    of calls run until ``min_time_s`` has passed. ``flush_l2`` (CUDA only)
    clears the L2 cache before every timed call.

    ``energy`` (a reader of the GPU's energy counter in mJ): the energy of the
    timed calls alone, warmup excluded: the timed loop's energy less that of
    the same number of L2 scrubs run alone right after it (eager timing only).
    """
    problem = timing_unsupported(mode, device)
    if problem:
        raise CaseUnsupported(problem)
    for _ in range(max(1, warmup)):
        fn()
    _sync(device)
    note = ""
    auto = repeats <= 0
    if auto:
        per_call = steady_call_s(fn, device, min_time_s)
        wanted = max(5, math.ceil(min_time_s / max(per_call, 1e-9)))
        repeats = min(wanted, max_repeats)
        if wanted > max_repeats:
            note = (f"repeats capped at {max_repeats}: about {repeats * per_call:.2g} s timed of "
                    f"min_time_s={min_time_s:g}")
    if mode == "kernels" and repeats > KERNEL_REPEATS:  # one profiler session holds every call's events
        note = "; ".join(n for n in (note, f"timing=kernels profiles {KERNEL_REPEATS} calls, not {repeats}") if n)
        repeats = KERNEL_REPEATS
    call = capture_graph(fn, device) if mode == "cuda_graph" else fn
    _sync(device)
    e0 = energy() if energy and mode == "eager" else None
    start, cpu0 = time.perf_counter(), time.process_time()
    if mode == "kernels":
        samples = kernel_samples(fn, device, repeats, flush_l2)
    else:
        samples, rounds = [], 0
        while True:  # with repeats=0, min_time_s is a floor: a slow estimate (a busy machine) adds rounds
            samples += _timed_calls(call, device, repeats, flush_l2)
            rounds += 1
            took = time.perf_counter() - start
            if not auto or took >= min_time_s or len(samples) >= max_repeats or rounds >= MAX_ROUNDS:
                break
            per_call = took / len(samples)
            repeats = max(1, min(max_repeats - len(samples), math.ceil((min_time_s - took) / max(per_call, 1e-9))))
    total, cpu = time.perf_counter() - start, time.process_time() - cpu0
    joules = _calls_energy(energy, e0, device, len(samples), flush_l2 and device.type == "cuda") \
        if e0 is not None else math.nan
    return Timing.of(samples, total, cpu, energy_j=joules, busy_s=sum(samples) / 1e3, note=note)


def _timed_calls(call: Fn, device: torch.device, repeats: int, flush_l2: bool) -> list[float]:
    """Milliseconds of each of ``repeats`` calls: CUDA events on a GPU, perf_counter on the CPU."""
    if device.type == "cuda":
        return _cuda_event_samples(call, device, repeats, flush_l2)
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1e3)
    return samples


def steady_call_s(fn: Fn, device: torch.device, min_time_s: float) -> float:
    """Seconds per call once warm: calls (synchronised as a batch) until a tenth of
    ``min_time_s`` (at least 1 ms, at most 0.2 s) has passed, at least two."""
    budget = min(0.2, max(1e-3, min_time_s / 10))
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if n >= 2:
            _sync(device)
            took = time.perf_counter() - t0
            if took >= budget:
                return took / n


def _calls_energy(energy, e0, device, repeats: int, scrubbed: bool) -> float:
    """Joules of the timed calls: the loop's energy less the scrubs' (run alone, same count)."""
    _sync(device)
    e1 = energy()
    if e0 is None or e1 is None:
        return math.nan
    joules = (e1 - e0) / 1e3
    if scrubbed:
        scrub = torch.empty(L2_SCRUB_BYTES, dtype=torch.int8, device=device)
        e2 = energy()
        for _ in range(repeats):
            scrub.zero_()
        _sync(device)
        e3 = energy()
        if e2 is None or e3 is None:
            return math.nan
        joules -= (e3 - e2) / 1e3
    return joules


def _cuda_event_samples(call: Fn, device: torch.device, repeats: int, flush_l2: bool) -> list[float]:
    # Writing a buffer larger than L2 between calls evicts the inputs, so
    # each call starts from HBM as in a real network (do_bench does the
    # same); the write happens outside the events.
    scrub = torch.empty(L2_SCRUB_BYTES, dtype=torch.int8, device=device) if flush_l2 else None
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for a, b in events:
        if scrub is not None:
            scrub.zero_()
        a.record()
        call()
        b.record()
    torch.cuda.synchronize(device)
    return [a.elapsed_time(b) for a, b in events]


@contextlib.contextmanager
def _quiet_fd2():
    """Silence file descriptor 2: the CPU profiler's C++ side prints a
    start and a stop line there on every use, which is noise in a sweep."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@dataclass(frozen=True)
class Memory:
    peak_mib: float  # peak of everything allocated during the call (inputs and weights included)
    extra_mib: float  # peak minus what was allocated just before the call
    method: str


def peak_memory(fn: Fn, device: torch.device) -> Memory:
    """Peak memory of one call of ``fn``.

    CUDA: the caching allocator's statistics (max_memory_allocated) around the call.
    CPU: torch's profiler with ``profile_memory=True`` records every allocation
    and free that torch's CPU allocator makes during the call; their running sum
    gives the peak above the pre-call level. That sees torch's tensors (not
    Python objects, not allocator caching), which is what we want to compare.
    The pre-call level on CPU is the size of the tensors reachable as inputs,
    which the workload does not tell us, so ``peak_mib`` on CPU equals the
    extra (call-allocated) peak; the method column says so.
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return Memory(peak / 2**20, (peak - before) / 2**20, "cuda_max_memory_allocated")

    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return Memory(peak / 2**20, peak / 2**20, "cpu_profiler_allocations")


SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_backward": "flash",
    "aten::_scaled_dot_product_efficient_attention_backward": "efficient",
    "aten::_scaled_dot_product_cudnn_attention_backward": "cudnn",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward": "flash_cpu",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
}


def sdpa_kernels(fn: Fn) -> set[str]:
    """The SDPA kernels that actually ran in one call (flash, flash_cpu,
    efficient, cudnn, math): the backend that ran, not the one asked for.

    Read from the profiler's op names, which include composite ops such as the
    math backend and pass higher-order ops (FlexAttention) through untouched.
    """
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {SDPA_KERNELS[e.name] for e in prof.events() if e.name in SDPA_KERNELS}
