"""A first look at a GPU in a few minutes, that cannot lose what it measured:
``python -m benchmarks.gpu_probe OUT [--budget-s 330] [--steps env,correct,...]``.

Each step runs in its own process under its own time limit and appends one
JSON line per measurement to ``OUT/probe.jsonl`` as soon as it is taken (one
``write`` per line on a file opened for appending, then fsync), so a step that
is stopped, crashes or poisons its CUDA context keeps every earlier line.
Steps, most valuable first:

- ``env``: versions, the GPU, a C compiler for Triton's launcher, the Triton
  APIs the kernels use, and the two ceilings (an 8192^3 fp16 matmul, a 1 GiB
  device copy) on random data;
- ``correct``: the fast ELFATT forward and its fused backward against float64
  (relative error), with the first call's seconds (compiles included);
- ``fwd`` / ``fwd_bwd``: ViT-B/16 attention cores (12 heads x 64) at 1024,
  2048 and 3072 px (batch 1) and 224 px (batch 256), fp16: the fast path, its
  SDPA-stripes variant, the reference and torch SDPA pinned to flash, cuDNN
  and efficient, each timed eagerly (CUDA events, L2 scrubbed), as a CUDA
  graph replay and by ``triton.testing.do_bench``;
- ``kernels``: per-kernel GPU time and launch count from one profiler session;
- ``host``: host microseconds per call (calls queued without a sync);
- ``nvml``: SM clock and clock-event reasons sampled during a 4 s matmul load;
- ``harness``: ``run.py`` end to end on the GPU (op, cuda_graph, kernels, a model).

Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

STEPS = {"env": 25, "correct": 75, "fwd": 75, "fwd_bwd": 60, "kernels": 30, "host": 20, "nvml": 15, "harness": 80}
DIM, HEADS, PATCH = 768, 12, 16
RES_BATCH = ((1024, 1), (2048, 1), (3072, 1), (224, 256))


class Sink:
    """Append-only JSON lines; each line is one write, flushed and fsynced."""

    def __init__(self, path: Path, step: str):
        self.path, self.step = path, step

    def __call__(self, **row) -> None:
        row = {"step": self.step, "t": round(time.time(), 3), **row}
        line = (json.dumps(row, default=str) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        print(json.dumps(row, default=str)[:200], flush=True)


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


# -- steps ----------------------------------------------------------------
def step_env(out) -> None:
    import torch
    import triton

    p = torch.cuda.get_device_properties(0)
    out(kind="versions", torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(), python=sys.version.split()[0], gpu=p.name, sms=p.multi_processor_count,
        mem_gib=round(p.total_memory / 2**30, 1), l2_mib=getattr(p, "L2_cache_size", 0) / 2**20,
        cc=shutil.which("cc") or "", gcc=shutil.which("gcc") or "", nvcc=shutil.which("nvcc") or "",
        triton_knobs=hasattr(triton, "knobs"))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,"
                              "power.limit,temperature.gpu,pstate", "--format=csv"], capture_output=True, text=True,
                             timeout=10).stdout
        out(kind="nvidia_smi", text=smi)
    except Exception as e:  # noqa: BLE001 - a fact we could not read is a row too
        out(kind="nvidia_smi", error=first_line(e))
    from triton.testing import do_bench

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.float16) for _ in range(2))
    ms = do_bench(lambda: a @ b, return_mode="median")
    out(kind="ceiling", what="matmul fp16 8192^3", ms=ms, tflops=2 * 8192**3 / ms / 1e9)
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    out(kind="ceiling", what="copy 1 GiB fp32", ms=ms, gbps=2 * src.numel() * 4 / ms / 1e6)


def layer_qkv(batch, n, dtype, seed=0, dim=DIM, heads=HEADS):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, n, 3 * dim, device="cuda", dtype=dtype, generator=g)
    return qkv.view(batch, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)


def elfatt(dim, heads, dtype, impl="fast", **kw):
    import torch

    import attentions

    torch.manual_seed(0)
    m = attentions.create_attention("elfatt", dim, heads, impl=impl, **kw)
    for conv in (m.lepe_global, m.lepe_local):  # non-trivial LePE weights
        if conv is not None:
            torch.nn.init.normal_(conv.weight, std=0.3)
            torch.nn.init.normal_(conv.bias, std=0.3)
    return m.to("cuda", dtype)


def step_correct(out) -> None:
    import torch

    cases = [(768, 12, (64, 64), 1, torch.float16, {}), (768, 12, (14, 14), 8, torch.float16, {}),
             (768, 12, (64, 64), 1, torch.bfloat16, {}), (64, 1, (12, 10), 2, torch.float16, {}),
             (96, 3, (9, 7), 3, torch.float16, {"block_rows": 3}), (768, 12, (192, 192), 1, torch.float16, {}),
             (768, 12, (64, 64), 1, torch.float16, {"tuning": {"local": "sdpa"}}), (768, 12, (14, 14), 2, torch.float32, {})]
    for dim, heads, hw, batch, dtype, kw in cases:
        case = dict(dim=dim, heads=heads, hw=list(hw), batch=batch, dtype=str(dtype).split(".")[1], opts=kw)
        try:
            m = elfatt(dim, heads, dtype, **kw)
            ref = elfatt(dim, heads, torch.float64, impl="reference", **{k: v for k, v in kw.items() if k != "tuning"})
            ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
            q, k, v = layer_qkv(batch, hw[0] * hw[1], dtype, dim=dim, heads=heads)
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            leaves64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            y = m.attend(*leaves, hw)
            torch.cuda.synchronize()
            first_fwd = time.perf_counter() - t0
            y64 = ref.attend(*leaves64, hw)
            grad = torch.randn_like(y64)
            t0 = time.perf_counter()
            torch.autograd.backward(y, grad.to(dtype))
            torch.cuda.synchronize()
            first_bwd = time.perf_counter() - t0
            torch.autograd.backward(y64, grad)
            errs = {n: rel_err(a.grad, b.grad) for n, a, b in zip("qkv", leaves, leaves64)}
            out(kind="correct", **case, ran=m.run_info().get("impl_ran"), fwd_err=rel_err(y, y64),
                **{f"d{n}_err": e for n, e in errs.items()},
                finite=bool(torch.isfinite(y).all()), first_fwd_s=round(first_fwd, 2), first_bwd_s=round(first_bwd, 2),
                info=m.run_info())
            del m, ref, y, y64, leaves, leaves64
        except Exception as e:  # noqa: BLE001 - a failed case is a row, the step goes on
            out(kind="correct", **case, error=first_line(e))
        torch.cuda.empty_cache()


def variants():
    return {"fast": ("elfatt", {"impl": "fast"}), "fast_sdpa": ("elfatt", {"impl": "fast", "tuning": {"local": "sdpa"}}),
            "reference": ("elfatt", {"impl": "reference"}), "flash": ("sdpa", {"impl": "flash"}),
            "cudnn": ("sdpa", {"impl": "cudnn"}), "efficient": ("sdpa", {"impl": "efficient"})}


def timed(fn, mode):
    import torch

    from suite.measure import time_fn

    t = time_fn(fn, torch.device("cuda"), warmup=5, min_time_s=0.25, max_repeats=400, mode=mode)
    return {"p10": t.p10_ms, "p50": t.p50_ms, "p90": t.p90_ms, "n": t.repeats}


def step_timing(out, direction: str) -> None:
    import torch
    from triton.testing import do_bench

    import attentions

    for res, batch in RES_BATCH:
        if direction == "fwd_bwd" and res == 224:
            batch = 64
        hw = (res // PATCH, res // PATCH)
        q, k, v = layer_qkv(batch, hw[0] * hw[1], torch.float16)
        if direction == "fwd_bwd":
            q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
            grad = torch.randn(q.shape, device="cuda", dtype=q.dtype)
        for name, (att, opts) in variants().items():
            if name == "reference" and res > 1024:
                continue  # seconds per call: the fast path's reason to exist, shown at 1024
            row = dict(kind=direction, res=res, batch=batch, variant=name)
            try:
                torch.manual_seed(0)
                m = attentions.create_attention(att, DIM, HEADS, **opts).to("cuda", torch.float16)
                if direction == "fwd":
                    def fn(m=m):
                        with torch.inference_mode():
                            return m.attend(q, k, v, hw)
                else:
                    def fn(m=m):
                        for t in (q, k, v):
                            t.grad = None
                        torch.autograd.backward(m.attend(q, k, v, hw), grad, inputs=[q, k, v])
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                row["first_call_s"] = round(time.perf_counter() - t0, 3)
                row["eager"] = timed(fn, "eager")
                row["do_bench_ms"] = do_bench(fn, return_mode="median")
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                row["beyond_inputs_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
                row["info"] = m.run_info()
                try:
                    row["graph"] = timed(fn, "cuda_graph")
                except Exception as e:  # noqa: BLE001 - a failed capture keeps the eager timing
                    row["graph_error"] = first_line(e)
            except Exception as e:  # noqa: BLE001 - a failed variant is a row
                row["error"] = first_line(e)
            out(**row)
            torch.cuda.empty_cache()


def step_kernels(out) -> None:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for res, batch in ((1024, 1), (3072, 1), (224, 256)):
        hw = (res // PATCH, res // PATCH)
        for direction in ("fwd", "fwd_bwd"):
            m = elfatt(DIM, HEADS, torch.float16)
            q, k, v = layer_qkv(batch, hw[0] * hw[1], torch.float16)
            q, k, v = (t.detach().requires_grad_(direction == "fwd_bwd") for t in (q, k, v))
            grad = torch.randn(q.shape, device="cuda", dtype=q.dtype)

            def fn():
                if direction == "fwd":
                    with torch.inference_mode():
                        return m.attend(q, k, v, hw)
                torch.autograd.backward(m.attend(q, k, v, hw), grad, inputs=[q, k, v])

            try:
                fn(), fn()
                torch.cuda.synchronize()
                calls = 5
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(calls):
                        fn()
                    torch.cuda.synchronize()
                per = {}
                for e in prof.profiler.kineto_results.events():
                    if e.device_type() == DeviceType.CUDA:
                        c, us = per.get(e.name()[:60], (0, 0.0))
                        per[e.name()[:60]] = (c + 1 / calls, us + e.duration_ns() / 1e3 / calls)
                out(kind="kernels", res=res, batch=batch, direction=direction,
                    kernels={k: {"launches": c, "us": round(us, 1)} for k, (c, us) in sorted(per.items(), key=lambda x: -x[1][1])},
                    gpu_us_total=round(sum(us for _, us in per.values()), 1))
            except Exception as e:  # noqa: BLE001
                out(kind="kernels", res=res, direction=direction, error=first_line(e))
            torch.cuda.empty_cache()


def step_host(out) -> None:
    import torch

    import attentions

    hw = (64, 64)
    for name, (att, opts) in variants().items():
        if name == "reference":
            continue
        torch.manual_seed(0)
        m = attentions.create_attention(att, DIM, HEADS, **opts).to("cuda", torch.float16)
        q, k, v = layer_qkv(1, hw[0] * hw[1], torch.float16)
        for direction in ("fwd", "fwd_bwd"):
            qq, kk, vv = (t.detach().requires_grad_(direction == "fwd_bwd") for t in (q, k, v))
            grad = torch.randn(q.shape, device="cuda", dtype=q.dtype)

            def fn():
                if direction == "fwd":
                    with torch.inference_mode():
                        return m.attend(qq, kk, vv, hw)
                torch.autograd.backward(m.attend(qq, kk, vv, hw), grad, inputs=[qq, kk, vv])

            try:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                n = 200
                t0, c0 = time.perf_counter(), time.process_time()
                for _ in range(n):
                    fn()
                queued = time.perf_counter() - t0
                cpu = time.process_time() - c0
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
                out(kind="host", variant=name, res=1024, direction=direction, host_us_per_call=queued / n * 1e6,
                    cpu_us_per_call=cpu / n * 1e6, wall_us_per_call=wall / n * 1e6)
            except Exception as e:  # noqa: BLE001
                out(kind="host", variant=name, direction=direction, error=first_line(e))


def step_nvml(out) -> None:
    import threading

    import pynvml
    import torch

    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    samples, stop = [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                samples.append((pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                                pynvml.nvmlDeviceGetCurrentClocksEventReasons(h),
                                pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                                pynvml.nvmlDeviceGetPowerUsage(h)))
            except pynvml.NVMLError as e:
                samples.append(("error", str(e), 0, 0))
            time.sleep(0.02)

    idle = (pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM), pynvml.nvmlDeviceGetCurrentClocksEventReasons(h))
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.float16) for _ in range(2))
    th = threading.Thread(target=poll, daemon=True)
    th.start()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 4:
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
    stop.set()
    th.join()
    clocks = [s[0] for s in samples if s[0] != "error"]
    reasons = {}
    for s in samples:
        if s[0] != "error":
            reasons[hex(s[1])] = reasons.get(hex(s[1]), 0) + 1
    out(kind="nvml_under_load", idle_clock=idle[0], idle_reasons=hex(idle[1]), samples=len(samples),
        clock_min=min(clocks, default=None), clock_max=max(clocks, default=None),
        clock_p50=sorted(clocks)[len(clocks) // 2] if clocks else None, reasons=reasons,
        temp_max=max((s[2] for s in samples if s[0] != "error"), default=None),
        power_mw_max=max((s[3] for s in samples if s[0] != "error"), default=None),
        errors=[s[1] for s in samples if s[0] == "error"][:3])


def step_harness(out) -> None:
    runs = [["attention=elfatt", "resolution=1024", "workload=op", "precision=fp16"],
            ["attention=sdpa_cudnn", "resolution=1024", "workload=op", "precision=fp16"],
            ["attention=elfatt", "resolution=1024", "workload=op", "precision=fp16", "timing=cuda_graph"],
            ["attention=elfatt", "resolution=1024", "workload=op", "precision=fp16", "timing=kernels"],
            ["attention=elfatt", "resolution=1024", "workload=layer", "precision=fp16", "direction=fwd_bwd"],
            ["workload=model", "model=swin_t", "attention=elfatt", "resolution=224", "batch_size=128",
             "precision=amp", "model.fidelity=false"]]
    folder = Path(os.environ.get("PROBE_LOGS", "/tmp/probe")) / "harness"
    for i, args in enumerate(runs):
        cmd = [sys.executable, "run.py", *args, "device=cuda", "min_time_s=0.3", f"hydra.run.dir={folder}/{i}"]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=40)
            rows = []
            for f in (folder / str(i)).rglob("records.csv"):
                import pandas as pd

                rows += pd.read_csv(f).to_dict("records")
            keep = ("status", "reason", "latency_ms_p50", "latency_ms_p10", "latency_ms_p90", "timing_quality",
                    "timing_note", "peak_mem_mib", "flops_analytic", "flops_counted", "rel_err_vs_fp64",
                    "grad_rel_err_vs_fp64", "throughput_per_s", "gpu_sm_clock_mhz_start", "gpu_sm_clock_mhz_min",
                    "gpu_throttle_reasons", "energy_j", "avg_power_w", "run_info", "sdpa_kernels", "repeats",
                    "timing_attempts", "peak_extra_mem_mib", "model_info")
            out(kind="harness", args=args, rc=p.returncode, seconds=round(time.perf_counter() - t0, 1),
                rows=[{k: r.get(k) for k in keep if k in r} for r in rows], stderr_tail=p.stderr[-600:],
                stdout_tail=p.stdout[-1500:])
        except subprocess.TimeoutExpired as e:
            out(kind="harness", args=args, error="timeout 40 s", stdout_tail=str(e.stdout)[-800:])


# -- summary --------------------------------------------------------------
def summarize(path: Path) -> str:
    """Markdown tables from a ``probe.jsonl``: what the numbers in the README and NOTES come from."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    env = next((r for r in rows if r.get("kind") == "versions"), {})
    lines = [f"GPU probe on {env.get('gpu', '?')}: torch {env.get('torch', '?')}, triton {env.get('triton', '?')}, "
             f"cuDNN {env.get('cudnn', '?')}, CUDA {env.get('cuda', '?')}, Python {env.get('python', '?')}", ""]
    lines += [f"- ceiling: {r['what']}: {r['ms']:.3f} ms" + (f" = {r['tflops']:.0f} TFLOP/s" if "tflops" in r else
                                                            f" = {r['gbps']:.0f} GB/s") for r in rows if r.get("kind") == "ceiling"]
    steps = [r for r in rows if r.get("kind") in ("step", "step_cut")]
    lines += ["", "Steps: " + "; ".join(f"{r['name']} {r.get('status', 'cut')} ({r.get('seconds', 0)} s)" for r in steps)]
    correct = [r for r in rows if r.get("kind") == "correct"]
    if correct:
        lines += ["", "| case | dtype | ran | out err | dq err | dk err | dv err | first fwd s | first bwd s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in correct:
            case = f"{r['dim']}/{r['heads']}h {r['hw'][0]}x{r['hw'][1]} b{r['batch']} {r['opts'] or ''}".strip()
            if "error" in r:
                lines.append(f"| {case} | {r['dtype']} | error: {r['error'][:80]} | | | | | | |")
                continue
            lines.append(f"| {case} | {r['dtype']} | {r['ran']} | {r['fwd_err']:.1e} | {r['dq_err']:.1e} | "
                         f"{r['dk_err']:.1e} | {r['dv_err']:.1e} | {r['first_fwd_s']} | {r['first_bwd_s']} |")
    for direction in ("fwd", "fwd_bwd"):
        timed_rows = [r for r in rows if r.get("kind") == direction]
        if not timed_rows:
            continue
        lines += ["", f"{direction}, fp16, ViT-B/16 cores (12 x 64), p50 ms: eager (CUDA events, L2 scrubbed) / "
                  "CUDA-graph replay", "", "| px | batch | " + " | ".join(variants()) + " | cuDNN / fast (eager, graph) |",
                  "|---|---|" + "---|" * (len(variants()) + 1)]
        for res, batch in sorted({(r["res"], r["batch"]) for r in timed_rows}, key=lambda x: (x[0] == 224, x[0])):
            by = {r["variant"]: r for r in timed_rows if (r["res"], r["batch"]) == (res, batch)}

            def cell(v):
                r = by.get(v)
                if r is None:
                    return "-"
                if "error" in r:
                    return "error"
                g = r.get("graph", {}).get("p50")
                return f"{r['eager']['p50']:.3f} / {g:.3f}" if g else f"{r['eager']['p50']:.3f}"

            ratio = ""
            if "fast" in by and "cudnn" in by and "eager" in by["fast"] and "eager" in by["cudnn"]:
                f, c = by["fast"], by["cudnn"]
                ratio = f"{c['eager']['p50'] / f['eager']['p50']:.2f}x"
                if "graph" in f and "graph" in c:
                    ratio += f", {c['graph']['p50'] / f['graph']['p50']:.2f}x"
            lines.append(f"| {res} | {batch} | " + " | ".join(cell(v) for v in variants()) + f" | {ratio} |")
    for r in (r for r in rows if r.get("kind") == "kernels" and "kernels" in r):
        top = ", ".join(f"{k.split('(')[0].split('<')[0][:28]} {v['us']:.0f}" for k, v in list(r["kernels"].items())[:6])
        lines.append(f"- kernels {r['res']} px b{r['batch']} {r['direction']}: {r['gpu_us_total']:.0f} us in all; {top}")
    for r in (r for r in rows if r.get("kind") == "host" and "error" not in r):
        lines.append(f"- host {r['variant']} {r['direction']} 1024 px: {r['cpu_us_per_call']:.0f} us CPU per call, "
                     f"{r['wall_us_per_call']:.0f} us wall per call (200 calls queued)")
    for r in (r for r in rows if r.get("kind") == "nvml_under_load"):
        lines.append(f"- NVML under a 4 s fp16 matmul load: SM clock {r['clock_min']}-{r['clock_max']} MHz "
                     f"(median {r['clock_p50']}), reason bits seen {r['reasons']}, {r['temp_max']} C max, "
                     f"{r['power_mw_max'] / 1e3:.0f} W max; idle {r['idle_clock']} MHz")
    return "\n".join(lines) + "\n"


# -- driver ---------------------------------------------------------------
def run_one(name: str, folder: Path) -> int:
    out = Sink(folder / "probe.jsonl", name)
    t0 = time.perf_counter()
    try:
        {"env": step_env, "correct": step_correct, "fwd": lambda o: step_timing(o, "fwd"),
         "fwd_bwd": lambda o: step_timing(o, "fwd_bwd"), "kernels": step_kernels, "host": step_host,
         "nvml": step_nvml, "harness": step_harness}[name](out)
    except Exception as e:  # noqa: BLE001 - the step's end is a row too
        out(kind="step_failed", error=first_line(e))
        return 1
    out(kind="step_done", seconds=round(time.perf_counter() - t0, 1))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe", description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for probe.jsonl and the steps' logs")
    ap.add_argument("--budget-s", type=float, default=330, help="the whole probe's time budget in seconds")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--logs", default="/tmp/probe", help="folder for each step's log and the harness runs")
    ap.add_argument("--summarize", action="store_true", help="print Markdown tables from OUT/probe.jsonl, measure nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.summarize:
        print(summarize(Path(args.out) / "probe.jsonl"), end="")
        return 0
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    if args.one:
        return run_one(args.one, folder)
    import torch

    if not torch.cuda.is_available():
        print(f"error: the GPU probe needs a CUDA GPU; torch {torch.__version__} sees none", file=sys.stderr)
        return 2
    steps = [s for s in args.steps.split(",") if s]
    bad = [s for s in steps if s not in STEPS]
    if bad:
        print(f"error: --steps {bad} unknown; valid: {', '.join(STEPS)}", file=sys.stderr)
        return 2
    start, sink = time.perf_counter(), Sink(folder / "probe.jsonl", "driver")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PROBE_LOGS": args.logs}
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    for name in steps:
        left = args.budget_s - (time.perf_counter() - start)
        cap = min(STEPS[name] * 1.0, left - 5)
        if cap < 8:
            sink(kind="step_cut", name=name, why=f"{left:.0f} s left of the budget")
            continue
        t0 = time.perf_counter()
        with (logs / f"{name}.log").open("w") as log:
            try:
                p = subprocess.run([sys.executable, "-m", "benchmarks.gpu_probe", str(folder), "--one", name],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, timeout=cap)
                status = f"exit {p.returncode}"
            except subprocess.TimeoutExpired:
                status = f"stopped at its {cap:.0f} s cap"
        sink(kind="step", name=name, status=status, seconds=round(time.perf_counter() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
