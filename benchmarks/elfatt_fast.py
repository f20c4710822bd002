"""GPU benchmark of ELFATT's fast path against its reference and each SDPA
backend, measured side by side in one run with the harness's own timer.

    python -m benchmarks.elfatt_fast [CSV] [--res 224,1024,...] [--dtypes fp16,bf16]
                                     [--graphs] [--tuning] [--fwd-bwd] [--no-vit] [--no-check]

For each resolution (ViT-B/16: 12 heads x 64, patch 16; batch 256 at 224,
32 at 512, 1 above) and dtype it times ``attend`` (the op; q, k, v are the
layer's strided views of one qkv tensor) for: ELFATT ``reference``, ``fast``
(Triton), ``fast_sdpa`` (stripes through SDPA + Triton LePE) and full SDPA
pinned to flash, cudnn and efficient. Every module comes from the registry.
``--fwd-bwd`` also times forward + backward of q, k, v (the fast path's
fused Triton backward against SDPA's backward kernels).

Timing: ``suite.measure.time_fn`` (CUDA events per call, L2 scrubbed before
each call; ``--graphs`` adds CUDA-graph replays). Memory beyond the inputs:
``suite.measure.peak_memory``. Floor, with ceilings measured in the same run:
  F = 4*B*N*(gc*d + (C - gc)*L) tensor-core FLOPs (global context + apply,
      local QK^T + PV), gc = global channels, L = block_rows * W
  M = 4*B*N*C*bytes(dtype)      read q, k, v once, write out once
  floor = max(F / R_mm, M / BW); R_mm: an 8192^3 matmul in that dtype,
  BW: a 1 GiB device-to-device copy, (read + write) bytes / time.

Output: a Markdown table, the targets with measured ratios and verdicts, and
one CSV row per (case, variant). Without CUDA it says why and returns 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import attentions
from suite.device import Nvml, environment
from suite.measure import peak_memory, time_fn
from suite.models import Block

RES_BATCH = {224: 256, 512: 32, 1024: 1, 2048: 1, 3072: 1, 4096: 1}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
DIM, HEADS, PATCH = 768, 12, 16
VARIANTS = {  # name -> (registered attention, options)
    "reference": ("elfatt", {"impl": "reference"}),
    "fast": ("elfatt", {"impl": "fast"}),
    "fast_sdpa": ("elfatt", {"impl": "fast", "tuning": {"local": "sdpa"}}),
    "flash": ("sdpa", {"impl": "flash"}),
    "cudnn": ("sdpa", {"impl": "cudnn"}),
    "efficient": ("sdpa", {"impl": "efficient"}),
}
SDPA = ("flash", "cudnn", "efficient")


def tunings(sms: int) -> list[dict]:
    """Tuning variants of the fast path that compile without spills on sm_90
    (the defaults first); ``sms``: the GPU's multiprocessor count."""
    return [{}, {"stripe_stages": 3}, {"global_splits": sms}, {"global_splits": 2 * sms},
            {"stripe_bm": 64, "stripe_bn": 128, "stripe_warps": 4}, {"stripe_bm": 64, "stripe_bn": 64, "stripe_warps": 4},
            {"out_warps": 8}, {"local": "sdpa", "sdpa_impl": "cudnn"}]


@dataclass(frozen=True)
class Target:
    """A promise of the fast path, checked on a measured table."""

    what: str
    resolution: int
    kind: str  # "max_ms" (fast p50 at most), "over_sdpa" (fastest SDPA / fast at least), "max_mem_ratio"
    bound: float
    direction: str = "fwd"


TARGETS = (
    Target("3072 px: fast p50 <= 0.6 ms", 3072, "max_ms", 0.6),
    Target("2048 px: >= 3x the fastest SDPA", 2048, "over_sdpa", 3.0),
    Target("1024 px: no slower than the fastest SDPA", 1024, "over_sdpa", 1.0),
    Target("224 px, batch 256: within 1.1x of the fastest SDPA", 224, "over_sdpa", 1 / 1.1),
    Target("3072 px: memory beyond inputs <= 2x the output", 3072, "max_mem_ratio", 2.0),
    Target("fwd+bwd, 3072 px: >= 10x the fastest SDPA", 3072, "over_sdpa", 10.0, "fwd_bwd"),
    Target("fwd+bwd, 2048 px: >= 3x the fastest SDPA", 2048, "over_sdpa", 3.0, "fwd_bwd"),
    Target("fwd+bwd, 1024 px: no slower than the fastest SDPA", 1024, "over_sdpa", 1.0, "fwd_bwd"),
)


def timed_ms(fn, device: torch.device, mode: str = "eager") -> float:
    return time_fn(fn, device, warmup=10, min_time_s=0.3, mode=mode).p50_ms


def ceilings(dtype: torch.dtype, device: torch.device) -> tuple[float, float]:
    """(matmul FLOP/s in dtype, copy bytes/s) measured here on random data."""
    a, b = (torch.randn(8192, 8192, device=device, dtype=dtype) for _ in range(2))
    mm = 2 * 8192**3 / (timed_ms(lambda: a @ b, device) * 1e-3)
    src = torch.randn(1 << 28, device=device)  # 1 GiB fp32
    dst = torch.empty_like(src)
    bw = 2 * src.numel() * 4 / (timed_ms(lambda: dst.copy_(src), device) * 1e-3)
    return mm, bw


def layer_qkv(batch: int, n: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """q, k, v as the layer makes them: permuted views of one (B, N, 3C) tensor."""
    g = torch.Generator(device=device).manual_seed(seed)
    qkv = torch.randn(batch, n, 3 * DIM, device=device, dtype=dtype, generator=g)
    return qkv.view(batch, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4).unbind(0)


def build(variant: str, dtype: torch.dtype, device: torch.device, state=None, tuning: dict | None = None):
    name, options = VARIANTS[variant]
    if tuning is not None:
        options = dict(options, tuning=tuning)
    torch.manual_seed(0)
    m = attentions.create_attention(name, DIM, HEADS, **options)
    if state is not None:
        m.load_state_dict(state)
    return m.to(device, dtype).eval()


def floor_ms(m, res: int, batch: int, dtype: torch.dtype, ceil: tuple[float, float]) -> float:
    """The roofline time of ELFATT's core (module ``m``) at this resolution: tensor-core FLOPs or bytes moved."""
    hw = (res // PATCH, res // PATCH)
    n = hw[0] * hw[1]
    flops = m.core_flops(batch, hw) - 2 * 9 * batch * n * DIM  # the LePE runs on CUDA cores: left out
    nbytes = 4 * batch * n * DIM * torch.finfo(dtype).bits // 8
    return max(flops / ceil[0], nbytes / ceil[1]) * 1e3


def measure_variant(m, q, k, v, hw, device, graphs: bool, direction: str = "fwd") -> dict:
    """Times of one variant; ``fwd_bwd``: the forward and the backward of q, k, v
    for a fixed output gradient (fresh .grad each call)."""
    if direction == "fwd_bwd":
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad = torch.randn(q.shape, device=q.device, dtype=q.dtype)

        def fn():
            for t in (q, k, v):
                t.grad = None
            torch.autograd.backward(m.attend(q, k, v, hw), grad, inputs=[q, k, v])
            return q.grad
    else:
        def fn():
            with torch.inference_mode():
                return m.attend(q, k, v, hw)
    fn()  # compiles / picks kernels outside the timed region
    row = {"ms_p50": timed_ms(fn, device)}
    if graphs and direction == "fwd":
        row["ms_graph"] = timed_ms(fn, device, mode="cuda_graph")
    row["beyond_inputs_mib"] = peak_memory(fn, device).extra_mib
    row["run_info"] = " ".join(f"{a}={b}" for a, b in m.run_info().items())
    return row


def run_case(res: int, dtype_name: str, ceil, args, device, tuning: dict | None = None,
             variants=tuple(VARIANTS), direction: str = "fwd") -> list[dict]:
    dtype, batch = DTYPES[dtype_name], RES_BATCH[res]
    hw = (res // PATCH, res // PATCH)
    q, k, v = layer_qkv(batch, hw[0] * hw[1], dtype, device)
    ref = build("reference", torch.float32, torch.device("cpu"))
    state = ref.state_dict()
    common = {"resolution": res, "batch": batch, "dtype": dtype_name, "direction": direction,
              "tuning": str(tuning or {}), "out_mib": batch * hw[0] * hw[1] * DIM * torch.finfo(dtype).bits / 8 / 2**20,
              "floor_ms": floor_ms(ref, res, batch, dtype, ceil)}
    fp64, rows = None, []
    for variant in variants:
        row = dict(common, variant=variant, status="ok")
        try:
            m = build(variant, dtype, device, state if VARIANTS[variant][0] == "elfatt" else None,
                      tuning if VARIANTS[variant][0] == "elfatt" else None)
            row.update(measure_variant(m, q, k, v, hw, device, args.graphs, direction))
            if args.check and VARIANTS[variant][0] == "elfatt":
                with torch.inference_mode():
                    out = m.attend(q, k, v, hw)
                if fp64 is None:
                    fp64 = build("reference", torch.float64, device, state).attend(q.double(), k.double(), v.double(), hw)
                row["rel_err_fp64"] = ((out.double() - fp64).norm() / fp64.norm()).item()
        except attentions.Unsupported as e:  # Unavailable too
            row["status"] = f"{type(e).__name__.lower()}: {e}"
        except torch.OutOfMemoryError:
            row["status"] = "out of memory"
        except RuntimeError as e:  # a backend that cannot run the case: a result, not a crash
            row["status"] = f"error: {str(e).strip().splitlines()[0][:200]}"
        torch.cuda.empty_cache()
        rows.append(row)
    return rows


def vit_images_per_s(variant: str, res: int, batch: int, dtype: torch.dtype, device: torch.device) -> str:
    """A 12-block ViT-B/16 encoder (the suite's Block: LayerNorm, attention, MLP) on tokens, inference."""
    name, options = VARIANTS[variant]
    hw = (res // PATCH, res // PATCH)
    try:
        blocks = torch.nn.ModuleList(Block(DIM, HEADS, 4.0, name, options, 1e-6) for _ in range(12)).to(device, dtype)
        x = torch.randn(batch, hw[0] * hw[1], DIM, device=device, dtype=dtype)

        def fn():
            y = x
            for blk in blocks:
                y = blk(y, hw)
            return y

        with torch.inference_mode():
            fn()
            return f"{batch / (timed_ms(fn, device) * 1e-3):.1f}"
    except attentions.Unsupported as e:
        return f"{type(e).__name__.lower()}: {e}"
    except torch.OutOfMemoryError:
        return "out of memory"


def table(df: pd.DataFrame) -> list[str]:
    head = ["res", "batch", "dtype", "direction", *VARIANTS, "best SDPA / fast", "floor / fast", "mem / out (fast)",
            "err fast"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (res, dt, direction), g in df[df["tuning"] == "{}"].groupby(["resolution", "dtype", "direction"]):
        by = g.set_index("variant")
        ok = {v: by.loc[v, "ms_p50"] for v in by.index if by.loc[v, "status"] == "ok"}
        fast, sdpa = ok.get("fast"), [ok[s] for s in SDPA if s in ok]
        cells = [str(res), str(int(g["batch"].iloc[0])), dt, direction]
        cells += [f"{ok[v]:.3f}" if v in ok else str(by.loc[v, "status"]).split(":")[0] for v in VARIANTS]
        cells.append(f"{min(sdpa) / fast:.2f}" if fast and sdpa else "")
        cells.append(f"{by.loc['fast', 'floor_ms'] / fast:.0%}" if fast else "")
        cells.append(f"{by.loc['fast', 'beyond_inputs_mib'] / by.loc['fast', 'out_mib']:.2f}" if fast else "")
        cells.append(f"{by.loc['fast'].get('rel_err_fp64', float('nan')):.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def verdicts(df: pd.DataFrame, dtype: str = "fp16") -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target that the table covers."""
    out = []
    base = df[(df["tuning"] == "{}") & (df["dtype"] == dtype) & (df["status"] == "ok")]
    for t in TARGETS:
        g = base[(base["resolution"] == t.resolution) & (base["direction"] == t.direction)].set_index("variant")
        if "fast" not in g.index:
            out.append((t.what, "not measured", "owed"))
            continue
        fast = g.loc["fast"]
        if t.kind == "max_ms":
            value, ok = f"{fast['ms_p50']:.3f} ms", fast["ms_p50"] <= t.bound
        elif t.kind == "max_mem_ratio":
            ratio = fast["beyond_inputs_mib"] / fast["out_mib"]
            value, ok = f"{ratio:.2f}x", ratio <= t.bound
        else:
            sdpa = [g.loc[s, "ms_p50"] for s in SDPA if s in g.index]
            if not sdpa:
                out.append((t.what, "no SDPA backend ran", "owed"))
                continue
            ratio = min(sdpa) / fast["ms_p50"]
            value, ok = f"{ratio:.2f}x", ratio >= t.bound
        out.append((t.what, value, "met" if ok else "missed"))
    return out


def bench(args, device: torch.device) -> pd.DataFrame:
    rows = []
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    for name in args.dtypes.split(","):
        ceil = ceilings(DTYPES[name], device)
        print(f"ceilings {name}: matmul {ceil[0] / 1e12:.0f} TFLOP/s, copy {ceil[1] / 1e9:.0f} GB/s", flush=True)
        for res in args.resolutions:
            rows += run_case(res, name, ceil, args, device)
            if args.fwd_bwd:
                rows += run_case(res, name, ceil, args, device, variants=("reference", "fast", *SDPA),
                                 direction="fwd_bwd")
            if args.tuning:
                for t in tunings(sms)[1:]:
                    rows += run_case(res, name, ceil, args, device, tuning=t, variants=("fast",))
            print(f"  done {res} px {name}", flush=True)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.elfatt_fast", description=__doc__.splitlines()[0])
    p.add_argument("csv", nargs="?", default="results/bench_elfatt.csv", help="where to write the CSV rows")
    p.add_argument("--res", default="224,1024,2048,3072", help=f"resolutions, comma-separated, of {list(RES_BATCH)}")
    p.add_argument("--dtypes", default="fp16,bf16", help="fp16 and/or bf16")
    p.add_argument("--graphs", action="store_true", help="also time CUDA-graph replays")
    p.add_argument("--tuning", action="store_true", help="also time the fast path's tuning variants")
    p.add_argument("--fwd-bwd", action="store_true", help="also time forward + backward (the fused backward)")
    p.add_argument("--no-vit", dest="vit", action="store_false", help="skip the 12-block encoder at 3072")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the error vs float64")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"error: this benchmark needs a CUDA GPU; torch {torch.__version__} sees none. Nothing was measured.",
              file=sys.stderr)
        return 1
    try:
        args.resolutions = [int(r) for r in args.res.split(",")]
    except ValueError:
        args.resolutions = [-1]
    bad = [r for r in args.resolutions if r not in RES_BATCH] + [d for d in args.dtypes.split(",") if d not in DTYPES]
    if bad:
        print(f"error: --res/--dtypes {bad} not valid; valid resolutions: {list(RES_BATCH)}, dtypes: fp16, bf16",
              file=sys.stderr)
        return 2
    device = torch.device("cuda")
    env = environment(device) | Nvml(device).clocks()
    print(f"# ELFATT fast path on {env['device_name']}, torch {env['torch_version']}, cuDNN {env['cudnn_version']}, "
          f"SM clock {env.get('gpu_sm_clock_mhz', '?')} MHz, git {env['git_sha']}", flush=True)
    df = bench(args, device).assign(**{k: v for k, v in env.items() if isinstance(v, (str, int, float))})
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    targets = verdicts(df)
    out.with_name(out.stem + "_targets.json").write_text(json.dumps(
        [{"target": a, "measured": b, "verdict": c} for a, b, c in targets], indent=1))
    lines = ["", *table(df), "", "| target (fp16, op) | measured | verdict |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets]
    if args.vit and 3072 in args.resolutions:
        lines += ["", "12-block ViT-B/16 encoder at 3072, batch 1, fp16, images/s (target: fast >= 70):",
                  "| variant | images/s |", "|---|---|"]
        lines += [f"| {v} | {vit_images_per_s(v, 3072, 1, torch.float16, device)} |"
                  for v in ("flash", "cudnn", "reference", "fast")]
    print("\n".join([*lines, "", f"CSV: {out}"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
