"""The steps of ``benchmarks.gpu_probe``: each writes its measurements through
``out(**row)`` (one JSON line each) as soon as they are taken."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DIM, HEADS, PATCH = 768, 12, 16
RES_BATCH = ((1024, 1), (2048, 1), (3072, 1), (224, 256))


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


STEP_FUNCTIONS = {"env": step_env, "correct": step_correct, "fwd": lambda o: step_timing(o, "fwd"),
                  "fwd_bwd": lambda o: step_timing(o, "fwd_bwd"), "kernels": step_kernels, "host": step_host,
                  "nvml": step_nvml, "harness": step_harness}
