"""Compile the fast path's Triton kernels ahead of time for an H100 (sm_90),
without a GPU: it catches what the interpreter does not (types, layouts,
register spills, whether tensor-core wgmma is used).

Run in a fresh process (``python sm90.py forward fp16``) so that a test run
with TRITON_INTERPRET=1 cannot leave triton's own library in interpreter
mode; prints one JSON list of compiled launches.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
# ViT-B/16 attention at the benchmark's extremes: (resolution, batch); the
# sizes between differ only in the stripe length and the split count.
CASES = ((224, 256), (3072, 1))
TUNINGS = ({}, {"stripe_stages": 3}, {"global_splits": 132}, {"stripe_bm": 64, "stripe_bn": 128, "stripe_warps": 4},
           {"out_warps": 8})


FP32_PTRS = ("ws_ptr", "wws_ptr", "dctx_ptr", "col_ptr", "kst_ptr", "lse_ptr", "delta_ptr", "stats_ptr")
SCALARS_FP32 = ("qk_scale",)


def sm90_compile(kernel, ptr: str, consts: dict, warps: int, stages: int):
    """Pointer and stride arguments get the 16-divisibility the JIT sees at run time."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = ("*fp32" if name in FP32_PTRS else ptr) if name.endswith("_ptr") else "fp32" if name in SCALARS_FP32 \
            else "i32"
        if name.endswith("_ptr") or name.startswith("s_"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})


def resource_usage(compiled) -> tuple[int, int] | None:
    """(registers per thread, stack bytes per thread: spills) of a compiled kernel, read with triton's cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return int(usage.split("REG:")[1].split()[0]), int(usage.split("STACK:")[1].split()[0])


def forward_launches(dtype_name: str) -> list:
    """Every distinct launch of the fast forward over CASES x TUNINGS."""
    import torch

    import attentions
    from attentions.kernels.elfatt_fast import case_plan
    from attentions.kernels.spec import Tuning

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    seen = {}
    for tuning in TUNINGS:
        for local in ("triton", "sdpa"):
            t = Tuning.from_dict(dict(tuning, local=local))
            for res, batch in CASES:
                hw = (res // 16, res // 16)
                spec = attentions.create_attention("elfatt", 768, 12).spec(hw)
                for launch in case_plan(spec, batch, hw, dtype, t).values():
                    seen[(launch.kernel, json.dumps(launch.consts, sort_keys=True), launch.num_warps,
                          launch.num_stages)] = launch
    return list(seen.values())


def backward_launches(dtype_name: str) -> list:
    """Every distinct launch of the fused backward, and of the forward that keeps
    its statistics, over CASES and one head of width 128 (split by channels: 64 + 64)."""
    import torch

    import attentions
    from attentions.kernels import elfatt_backward, elfatt_fast

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    seen = {}
    for dim, heads, (res, batch) in [(768, 12, c) for c in CASES] + [(128, 1, (224, 8)), (256, 2, (224, 8))]:
        hw = (res // 16, res // 16)
        spec = attentions.create_attention("elfatt", dim, heads).spec(hw)
        plans = {**elfatt_backward.case_plan(spec, batch, hw, dtype),
                 **{f"fwd_{k}": v for k, v in elfatt_fast.case_plan(spec, batch, hw, dtype, stats=True).items()}}
        for launch in plans.values():
            seen[(launch.kernel, json.dumps(launch.consts, sort_keys=True), launch.num_warps,
                  launch.num_stages)] = launch
    return list(seen.values())


def report(which: str, dtype_name: str) -> list[dict]:
    from attentions.kernels.elfatt_backward import load_backward_kernels
    from attentions.kernels.elfatt_fast import load_kernels

    kt, kb = load_kernels(), load_backward_kernels()
    ptr = {"fp16": "*fp16", "bf16": "*bf16"}[dtype_name]
    out = []
    for launch in {"forward": forward_launches, "backward": backward_launches}[which](dtype_name):
        module = kb if hasattr(kb, launch.kernel) else kt
        c = sm90_compile(getattr(module, launch.kernel), ptr, launch.consts, launch.num_warps, launch.num_stages)
        regs, stack = resource_usage(c) or (None, None)
        out.append({"kernel": launch.kernel, "consts": launch.consts, "warps": launch.num_warps,
                    "stages": launch.num_stages, "regs": regs, "stack": stack, "wgmma": "wgmma" in c.asm["ptx"]})
    return out


def run_isolated(which: str, dtype_name: str) -> list[dict] | str:
    """``report`` in a fresh interpreter without TRITON_INTERPRET: the list, or why it could not compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, str(HERE / "sm90.py"), which, dtype_name], capture_output=True, text=True,
                       env=env, cwd=HERE.parents[1], timeout=900)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    try:
        print(json.dumps(report(sys.argv[1], sys.argv[2])))
    except Exception as e:  # noqa: BLE001 - the caller decides whether this is a skip or a failure
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        sys.exit(1)
