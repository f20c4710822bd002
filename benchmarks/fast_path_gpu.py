"""A short GPU check of the fast ELFATT path, one JSON line per measurement:

    python -m benchmarks.fast_path_gpu OUT.jsonl [--steps correct,time,host,kernels]
        [--variants default,unmerged,graph] [--res 1024,2048,3072,224]
    python -m benchmarks.fast_path_gpu --before-after BEFORE.jsonl AFTER.jsonl   (tables, no GPU)

ViT-B/16 attention cores (12 heads x 64; batch 1 from 1024 px, 256 at 224 px
forward, 64 forward+backward), fp16, q, k, v the layer's strided views of one
qkv tensor. Steps:

- ``correct``: forward and gradients (q, k, v and the LePE weights) against
  float64, per variant, plus bf16 and a one-head (channel split) case;
- ``time``: the op's p50 per call, forward and forward+backward, eagerly
  (CUDA events, L2 scrubbed: ``suite.measure.time_fn``) and as a CUDA-graph
  replay;
- ``host``: CPU microseconds per call at 1024 px, 200 calls queued without a
  sync (the ``jit`` variant launches through triton's JIT every call);
- ``kernels``: per-kernel GPU time from the profiler (gradients reset each
  call, so no accumulation kernels).

Variants (``VARIANTS``) are tuning options; ``default`` runs on any revision
of the project, so the same command measures the code before a change.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DIM, HEADS, PATCH = 768, 12, 16
VARIANTS = {"default": {}, "unmerged": {"merge_launches": False}, "graph": {"cuda_graph": True},
            "jit": {"fast_launch": False}, "mtiles": {"bwd_merge_tiles": True}, "red4": {"bwd_red_warps": 4}}
RES = (1024, 2048, 3072, 224)


def batch_of(res: int, direction: str) -> int:
    return 1 if res > 512 else (256 if direction == "fwd" else 64)


def module(dtype, tuning: dict, dim=DIM, heads=HEADS, impl="fast", **kw):
    import torch

    import attentions

    torch.manual_seed(0)
    opts = {"tuning": tuning} if tuning else {}
    m = attentions.create_attention("elfatt", dim, heads, impl=impl, **opts, **kw)
    for conv in (m.lepe_global, m.lepe_local):  # non-trivial LePE weights
        if conv is not None:
            torch.nn.init.normal_(conv.weight, std=0.3)
            torch.nn.init.normal_(conv.bias, std=0.3)
    return m.to("cuda", dtype)


def layer_qkv(batch, n, dtype, dim=DIM, heads=HEADS, grad=False):
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(batch, n, 3 * dim, device="cuda", dtype=dtype, generator=g)
    views = qkv.view(batch, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4).unbind(0)
    return [t.detach().requires_grad_() for t in views] if grad else list(views)


def rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def correct_case(out, dim, heads, hw, batch, dtype, tuning: dict, name: str) -> None:
    import torch

    m = module(dtype, tuning, dim, heads)
    ref = module(torch.float64, {}, dim, heads, impl="reference")
    ref.load_state_dict({k: v.double() for k, v in m.state_dict().items()})
    n = hw[0] * hw[1]
    leaves = layer_qkv(batch, n, dtype, dim, heads, grad=not tuning.get("cuda_graph"))
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    y64 = ref.attend(*leaves64, hw)
    row = dict(kind="correct", variant=name, dim=dim, heads=heads, hw=list(hw), batch=batch, dtype=str(dtype)[6:])
    if tuning.get("cuda_graph"):
        with torch.inference_mode():
            ys = [m.attend(*leaves, hw).clone() for _ in range(3)]  # capture, then replays
        out(**row, fwd_err=max(rel_err(y, y64) for y in ys), info=m.run_info())
        return
    y = m.attend(*leaves, hw)
    grad = torch.randn_like(y64)
    torch.autograd.backward(y, grad.to(dtype))
    torch.autograd.backward(y64, grad)
    errs = {f"d{c}_err": rel_err(a.grad, b.grad) for c, a, b in zip("qkv", leaves, leaves64)}
    errs |= {f"d_{n}_err": rel_err(p.grad, p64.grad) for (n, p), p64 in zip(m.named_parameters(), ref.parameters())
             if p.grad is not None and "lepe" in n}
    out(**row, fwd_err=rel_err(y, y64), **errs, info=m.run_info())


def step_correct(out, variants) -> None:
    import torch

    for name in variants:
        cases = [(768, 12, (64, 64), 1, torch.float16)]
        if name == "default":
            cases += [(768, 12, (14, 14), 4, torch.bfloat16), (64, 1, (12, 10), 2, torch.float16),
                      (768, 12, (192, 192), 1, torch.float16)]
        for dim, heads, hw, batch, dtype in cases:
            try:
                correct_case(out, dim, heads, hw, batch, dtype, VARIANTS[name], name)
            except Exception as e:  # noqa: BLE001 - a failed case is a row
                out(kind="correct", variant=name, hw=list(hw), error=f"{type(e).__name__}: {str(e)[:300]}")
            torch.cuda.empty_cache()


def call(m, direction: str, res: int):
    """A zero-argument call of the op: forward (inference) or forward + backward of q, k, v."""
    import torch

    hw = (res // PATCH, res // PATCH)
    batch = batch_of(res, direction)
    q, k, v = layer_qkv(batch, hw[0] * hw[1], torch.float16, grad=direction == "fwd_bwd")
    if direction == "fwd":
        def fn():
            with torch.inference_mode():
                return m.attend(q, k, v, hw)
        return fn
    g = torch.randn(q.shape, device="cuda", dtype=q.dtype)

    def fn():
        for t in (q, k, v):
            t.grad = None
        torch.autograd.backward(m.attend(q, k, v, hw), g, inputs=[q, k, v])
    return fn


def step_time(out, variants, resolutions) -> None:
    import torch

    from suite.measure import time_fn

    for res in resolutions:
        for direction in ("fwd", "fwd_bwd"):
            for name in variants:
                if name in ("graph", "jit") and direction == "fwd_bwd":
                    continue
                if direction == "fwd" and VARIANTS[name] and all(k.startswith("bwd_") for k in VARIANTS[name]):
                    continue  # backward knobs: the forward is the default's
                row = dict(kind="time", res=res, batch=batch_of(res, direction), direction=direction, variant=name)
                try:
                    m = module(torch.float16, VARIANTS[name])
                    fn = call(m, direction, res)
                    for mode in ("eager", "cuda_graph"):
                        t = time_fn(fn, torch.device("cuda"), warmup=5, min_time_s=0.2, max_repeats=300, mode=mode)
                        row[mode] = round(t.p50_ms, 4)
                    row["info"] = m.run_info()
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                out(**row)
                torch.cuda.empty_cache()


def step_host(out, variants) -> None:
    import torch

    for name in [v for v in variants if v != "unmerged"]:
        for direction in ("fwd", "fwd_bwd"):
            if name == "graph" and direction == "fwd_bwd":
                continue
            try:
                fn = call(module(torch.float16, VARIANTS[name]), direction, 1024)
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
                n, t0, c0 = 200, time.perf_counter(), time.process_time()
                for _ in range(n):
                    fn()
                queued, cpu = time.perf_counter() - t0, time.process_time() - c0
                torch.cuda.synchronize()
                out(kind="host", variant=name, res=1024, direction=direction, host_us_per_call=queued / n * 1e6,
                    cpu_us_per_call=cpu / n * 1e6, wall_us_per_call=(time.perf_counter() - t0) / n * 1e6)
            except Exception as e:  # noqa: BLE001
                out(kind="host", variant=name, direction=direction, error=f"{type(e).__name__}: {str(e)[:300]}")


def step_kernels(out, variants, resolutions) -> None:
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for res in resolutions:
        for direction in ("fwd", "fwd_bwd"):
            for name in (v for v in variants if v not in ("graph", "jit")):
                try:
                    fn = call(module(torch.float16, VARIANTS[name]), direction, res)
                    fn(), fn()
                    torch.cuda.synchronize()
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            fn()
                        torch.cuda.synchronize()
                    per = {}
                    for e in prof.profiler.kineto_results.events():
                        if e.device_type() == DeviceType.CUDA:
                            c, us = per.get(e.name()[:48], (0, 0.0))
                            per[e.name()[:48]] = (c + 0.2, us + e.duration_ns() / 5e3)
                    out(kind="kernels", res=res, direction=direction, variant=name,
                        kernels={k: [round(c, 1), round(us, 1)] for k, (c, us) in sorted(per.items(),
                                                                                       key=lambda x: -x[1][1])},
                        gpu_us_total=round(sum(us for _, us in per.values()), 1))
                except Exception as e:  # noqa: BLE001
                    out(kind="kernels", res=res, direction=direction, error=f"{type(e).__name__}: {str(e)[:300]}")


def before_after(before: Path, after: Path) -> str:
    """Markdown: the ``default`` variant's times and host cost in two runs of this script (before / after)."""
    def load(path):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        times = {(r["res"], r["batch"], r["direction"]): r for r in rows if r.get("kind") == "time"
                 and r.get("variant") == "default" and "eager" in r}
        host = {r["direction"]: r for r in rows if r.get("kind") == "host" and r.get("variant") == "default"}
        return times, host

    (bt, bh), (at, ah) = load(before), load(after)
    lines = ["| case | graph replay ms (before -> after) | eager ms (before -> after) |", "|---|---|---|"]
    for key in sorted(set(bt) & set(at), key=lambda k: (k[2], k[0] == 224, k[0])):
        b, a = bt[key], at[key]
        lines.append(f"| {key[2]} {key[0]} px b{key[1]} | {b['cuda_graph']:.4f} -> {a['cuda_graph']:.4f} | "
                     f"{b['eager']:.3f} -> {a['eager']:.3f} |")
    lines += ["", "| host us per call at 1024 px (200 queued) | before | after |", "|---|---|---|"]
    lines += [f"| {d} | {bh[d]['host_us_per_call']:.0f} | {ah[d]['host_us_per_call']:.0f} |"
              for d in ("fwd", "fwd_bwd") if d in bh and d in ah]
    return "\n".join(lines)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--before-after":
        print(before_after(Path(sys.argv[2]), Path(sys.argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", default="correct,time,host,kernels")
    ap.add_argument("--variants", default="default,unmerged,graph")
    ap.add_argument("--res", default=",".join(map(str, RES)))
    ap.add_argument("--kernel-res", default="1024,3072")
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("fast_path_gpu needs a CUDA GPU", file=sys.stderr)
        return 1
    variants, res = a.variants.split(","), [int(r) for r in a.res.split(",")]

    def out(**row):
        line = json.dumps(row, default=str)
        with a.out.open("a") as f:
            f.write(line + "\n")
        print(line[:400], flush=True)

    steps = {"correct": lambda: step_correct(out, variants), "time": lambda: step_time(out, variants, res),
             "host": lambda: step_host(out, variants),
             "kernels": lambda: step_kernels(out, variants, [int(r) for r in a.kernel_res.split(",")])}
    for step in a.steps.split(","):
        t0 = time.perf_counter()
        steps[step]()
        out(kind="step", step=step, seconds=round(time.perf_counter() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
