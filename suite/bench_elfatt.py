"""GPU benchmark of ELFATT's fast path (issue 5): reference, fast and SDPA.

    python -m suite.bench_elfatt [CSV] [--res 224,512,...] [--dtypes fp16,bf16]
                                 [--graphs] [--sweep] [--no-vit] [--no-check]

For each resolution (ViT-B/16: 12 heads x 64, patch 16; batch 256 at 224,
32 at 512, 1 above) and dtype it times ``attend`` (the op, q/k/v given as
the layer's strided views of one qkv tensor) for: ELFATT ``reference``,
``fast`` (Triton, local stripes in Triton), ``fast_sdpa`` (local stripes via
SDPA + Triton LePE) and full-sequence SDPA pinned to flash, cudnn and
efficient. Every module comes from the registry (``create_attention``).

Floor (METHOD.md's two numbers), ceilings measured in the same run:
  F = 4*B*N*(gc*d + (C - gc)*L)  tensor-core FLOPs (global context + apply,
      local QK^T + PV), gc = global channels, L = block_rows * W; the LePE's
      18*B*N*C CUDA-core FLOPs are left out (< 1% of F at 3072)
  M = 4*B*N*C*bytes(dtype)       read q, k, v once, write out once
  floor = max(F / R_mm, M / BW); R_mm: a 8192^3 matmul in that dtype,
  BW: a 1 GiB device-to-device copy, (read + write) bytes / time.
Timing: triton.testing.do_bench medians (it zeroes a 256 MB buffer before
every call, so no input is served from L2; the fallback timer does the same).

Output: a markdown table on stdout, one CSV row per (case, variant) at CSV
(default results/bench_elfatt.csv). Without CUDA it prints why and returns 1.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
import torch.nn as nn

RES_BATCH = {224: 256, 512: 32, 1024: 1, 2048: 1, 3072: 1, 4096: 1}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DIM, HEADS, PATCH = 768, 12, 16
VARIANTS = {  # name -> (registry name, options, fast_options)
    "reference": ("elfatt", {"impl": "reference"}, None),
    "fast": ("elfatt", {"impl": "fast"}, {}),
    "fast_sdpa": ("elfatt", {"impl": "fast"}, {"local": "sdpa"}),
    "flash": ("sdpa", {"backend": "flash"}, None),
    "cudnn": ("sdpa", {"backend": "cudnn"}, None),
    "efficient": ("sdpa", {"backend": "efficient"}, None),
}
SDPA = ("flash", "cudnn", "efficient")


# -- timing ------------------------------------------------------------------
def time_ms(fn) -> float:
    """Median device time of ``fn`` in ms (L2 flushed before each call)."""
    try:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
    except ImportError:
        pass
    flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    est = max(start.elapsed_time(end) / 3, 1e-3)
    for _ in range(max(1, int(25 / est))):
        fn()
    times = []
    for _ in range(max(5, min(1000, int(100 / est)))):
        flush.zero_()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn) -> float:
    """Median time of a CUDA-graph replay of ``fn`` (launch gaps removed)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return time_ms(graph.replay)


def peak_beyond(fn) -> int:
    """Peak bytes allocated by ``fn`` beyond what was allocated before (output included)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def ceilings(dtype: torch.dtype) -> tuple[float, float]:
    """(matmul FLOP/s in dtype, copy bytes/s) measured here on random data."""
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=dtype) for _ in range(2))
    mm = 2 * 8192**3 / (time_ms(lambda: a @ b) * 1e-3)
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB fp32
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 4 / (time_ms(lambda: dst.copy_(src)) * 1e-3)
    return mm, bw


# -- the cases -----------------------------------------------------------------
def layer_qkv(batch: int, n: int, dtype: torch.dtype, seed: int = 0):
    """q, k, v as the layer makes them: permuted views of one (B, N, 3C) tensor."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, n, 3 * DIM, device="cuda", dtype=dtype, generator=g)
    return qkv.view(batch, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)


def build(variant: str, dtype: torch.dtype, state=None) -> nn.Module:
    import attentions as A

    name, options, fast_options = VARIANTS[variant]
    torch.manual_seed(0)
    m = A.create_attention(name, DIM, HEADS, **options)
    if state is not None:
        m.load_state_dict(state)
    if fast_options is not None:
        m.fast_options = dict(fast_options)
    return m.to("cuda", dtype).eval()


def floor_terms(m: nn.Module, batch: int, hw: tuple[int, int], dtype: torch.dtype) -> tuple[int, int]:
    n = hw[0] * hw[1]
    lepe = 2 * 9 * batch * n * DIM
    flops = m.core_flops(batch, hw) - lepe
    nbytes = 4 * batch * n * DIM * torch.finfo(dtype).bits // 8
    return flops, nbytes


def run_case(res: int, batch: int, dtype: torch.dtype, ceil: tuple[float, float], args, env: dict) -> list[dict]:
    import attentions as A

    hw = (res // PATCH, res // PATCH)
    n = hw[0] * hw[1]
    q, k, v = layer_qkv(batch, n, dtype)
    out_bytes = batch * n * DIM * torch.finfo(dtype).bits // 8
    ref_state = build("reference", torch.float32).state_dict()
    flops, nbytes = floor_terms(build("reference", dtype), batch, hw, dtype)
    fp64 = None
    rows = []
    for variant in VARIANTS:
        row = {**env, "resolution": res, "batch": batch, "tokens": n, "dtype": str(dtype).split(".")[-1],
               "variant": variant, "status": "ok", "ms_p50": "", "ms_graph": "", "peak_beyond_inputs_bytes": "",
               "out_bytes": out_bytes, "rel_err_fp64": "", "run_info": ""}
        try:
            m = build(variant, dtype, ref_state if VARIANTS[variant][0] == "elfatt" else None)
            with torch.inference_mode():
                fn = lambda: m.attend(q, k, v, hw)  # noqa: E731
                out = fn()  # compiles / picks kernels outside the timed region
                row["ms_p50"] = round(time_ms(fn), 4)
                if args.graphs and variant in ("fast", "fast_sdpa", "flash", "cudnn"):
                    row["ms_graph"] = round(graph_ms(fn), 4)
                row["peak_beyond_inputs_bytes"] = peak_beyond(fn)
                if args.check and VARIANTS[variant][0] == "elfatt":
                    if fp64 is None:
                        m64 = build("reference", torch.float64, ref_state)
                        fp64 = m64.attend(q.double(), k.double(), v.double(), hw)
                    row["rel_err_fp64"] = f"{((out.double() - fp64).norm() / fp64.norm()).item():.2e}"
                del out
            row["run_info"] = " ".join(f"{a}={b}" for a, b in m.run_info().items())
        except A.Unsupported as e:  # Unavailable too
            row["status"] = f"{type(e).__name__.lower()}: {e}"
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        except RuntimeError as e:  # a backend that cannot run the case: a result, not a crash
            row["status"] = f"error: {str(e).strip().splitlines()[0][:200]}"
        torch.cuda.empty_cache()
        row["flops_tc"], row["bytes_min"] = flops, nbytes
        row["floor_ms"] = round(max(flops / ceil[0], nbytes / ceil[1]) * 1e3, 4)
        rows.append(row)
    return rows


# -- whole encoder ---------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, attn: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(DIM), attn, nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))

    def forward(self, x, hw):
        x = x + self.attn(self.norm1(x), hw)
        return x + self.mlp(self.norm2(x))


def vit_images_per_s(variant: str, res: int, batch: int, dtype: torch.dtype) -> str:
    """12-block ViT-B/16 encoder (LayerNorm, qkv, attention, proj, MLP) on tokens, inference."""
    import attentions as A

    hw = (res // PATCH, res // PATCH)
    try:
        blocks = nn.ModuleList(Block(build(variant, dtype)) for _ in range(12)).to("cuda", dtype)
        x = torch.randn(batch, hw[0] * hw[1], DIM, device="cuda", dtype=dtype)

        def fn():
            y = x
            for blk in blocks:
                y = blk(y, hw)
            return y

        with torch.inference_mode():
            fn()
            return f"{batch / (time_ms(fn) * 1e-3):.1f}"
    except A.Unsupported as e:
        return f"{type(e).__name__.lower()}: {e}"
    except torch.OutOfMemoryError:
        return "out of memory"
    except RuntimeError as e:
        return f"error: {str(e).strip().splitlines()[0][:200]}"


# -- tuning sweep ----------------------------------------------------------------
SWEEP = [  # fast_options tried at a few sizes: stripe tiles, warps, stages; global splits
    {}, {"stripe_bm": 64, "stripe_bn": 64, "stripe_warps": 4}, {"stripe_bm": 128, "stripe_bn": 64, "stripe_warps": 4},
    {"stripe_bm": 128, "stripe_bn": 64, "stripe_stages": 3}, {"stripe_bm": 128, "stripe_bn": 128, "stripe_warps": 8},
    {"stripe_bm": 64, "stripe_bn": 32, "stripe_warps": 4, "stripe_stages": 3},
    {"lepe_unroll": True}, {"global_splits": 1}, {"global_splits": 64}, {"out_bm": 128}, {"out_bm": 32},
    {"ctx_bn": 128}, {"ctx_warps": 8},
]


def sweep(dtype: torch.dtype) -> list[str]:
    lines = ["| resolution | fast_options | ms |", "|---|---|---|"]
    for res in (224, 1024, 3072):
        batch, hw = RES_BATCH[res], (res // PATCH, res // PATCH)
        q, k, v = layer_qkv(batch, hw[0] * hw[1], dtype)
        m = build("fast", dtype)
        for opts in SWEEP:
            m.fast_options = dict(opts)
            try:
                with torch.inference_mode():
                    m.attend(q, k, v, hw)
                    ms = f"{time_ms(lambda: m.attend(q, k, v, hw)):.4f}"
            except Exception as e:  # a config that does not compile is a result here
                ms = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
            lines.append(f"| {res} | {opts} | {ms} |")
    return lines


# -- report -----------------------------------------------------------------------
def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    env = {"gpu": props.name, "sms": props.multi_processor_count, "torch": torch.__version__,
           "cudnn": torch.backends.cudnn.version(), "triton": "", "sm_clock_mhz": "", "mem_clock_mhz": ""}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = "missing"
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        env["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
        env["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
    except Exception:  # NVML is optional: clocks stay blank
        pass
    return env


def _ms(rows: dict, name: str):
    r = rows.get(name)
    return r["ms_p50"] if r and r["status"] == "ok" else None


def table(all_rows: list[dict]) -> list[str]:
    head = ["res", "batch", "dtype", *VARIANTS, "best SDPA / fast", "cudnn / fast", "floor", "floor / fast",
            "mem / out (fast)", "err fast"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cases = {}
    for r in all_rows:
        cases.setdefault((r["resolution"], r["dtype"]), {})[r["variant"]] = r
    for (res, dt), rows in cases.items():
        fast = _ms(rows, "fast")
        sdpas = [t for t in (_ms(rows, s) for s in SDPA) if t]
        cells = [str(res), str(rows["fast"]["batch"]), dt]
        cells += [f"{_ms(rows, v):.3f}" if _ms(rows, v) else rows[v]["status"].split(":")[0] for v in VARIANTS]
        cells.append(f"{min(sdpas) / fast:.2f}" if fast and sdpas else "")
        cells.append(f"{_ms(rows, 'cudnn') / fast:.2f}" if fast and _ms(rows, "cudnn") else "")
        floor = rows["fast"]["floor_ms"]
        cells += [f"{floor:.3f}", f"{floor / fast:.0%}" if fast else ""]
        f = rows["fast"]
        cells.append(f"{f['peak_beyond_inputs_bytes'] / f['out_bytes']:.2f}" if f["peak_beyond_inputs_bytes"] != "" else "")
        cells.append(str(f["rel_err_fp64"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m suite.bench_elfatt", description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="?", default="results/bench_elfatt.csv", help="where to write the CSV rows")
    p.add_argument("--res", default=",".join(map(str, RES_BATCH)), help="resolutions, comma-separated")
    p.add_argument("--dtypes", default="fp16,bf16", help="fp16 and/or bf16")
    p.add_argument("--graphs", action="store_true", help="also time CUDA-graph replays")
    p.add_argument("--sweep", action="store_true", help="also sweep fast_options (tile sizes, splits), fp16")
    p.add_argument("--no-vit", dest="vit", action="store_false", help="skip the 12-block encoder at 3072")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the error vs float64")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"bench_elfatt needs a CUDA GPU; torch {torch.__version__} sees none "
              f"(torch.cuda.is_available() is False). Nothing was measured.", file=sys.stderr)
        return 1
    resolutions = [int(r) for r in args.res.split(",")]
    bad = [r for r in resolutions if r not in RES_BATCH]
    if bad:
        print(f"unknown resolution(s) {bad}; valid: {list(RES_BATCH)}", file=sys.stderr)
        return 2
    env = environment()
    print(f"# ELFATT fast path, {env['gpu']} ({env['sms']} SMs), torch {env['torch']}, triton {env['triton']}, "
          f"cuDNN {env['cudnn']}, clocks SM {env['sm_clock_mhz']} / mem {env['mem_clock_mhz']} MHz")
    rows, lines = [], []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ceil = ceilings(dtype)
        print(f"ceilings {name}: matmul {ceil[0] / 1e12:.0f} TFLOP/s, copy {ceil[1] / 1e9:.0f} GB/s", flush=True)
        for res in resolutions:
            rows += run_case(res, RES_BATCH[res], dtype, ceil, args, env)
            print(f"  done {res} {name}", flush=True)
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if args.graphs:
        lines += ["", "CUDA-graph replays (ms):", "| res | dtype | fast | fast_sdpa | flash | cudnn |", "|---|---|---|---|---|---|"]
        for r in rows:
            if r["variant"] == "fast":
                g = {x["variant"]: x["ms_graph"] for x in rows if (x["resolution"], x["dtype"]) == (r["resolution"], r["dtype"])}
                lines.append(f"| {r['resolution']} | {r['dtype']} | {g['fast']} | {g['fast_sdpa']} | {g['flash']} | {g['cudnn']} |")
    if args.vit and 3072 in resolutions:
        lines += ["", "12-block ViT-B/16 encoder at 3072, batch 1, fp16, images/s:", "| variant | images/s |", "|---|---|"]
        for variant in ("flash", "cudnn", "reference", "fast"):
            lines.append(f"| {variant} | {vit_images_per_s(variant, 3072, 1, torch.float16)} |")
    if args.sweep:
        lines += ["", "fast_options sweep (fp16):", *sweep(torch.float16)]
    print("\n".join(["", *table(rows), *lines, "", f"CSV: {out}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
