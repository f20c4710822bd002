"""Compile the fast path's Triton kernels ahead of time for an H100 (sm_90),
without a GPU: it catches what the interpreter does not (types, layouts,
register spills, whether tensor-core wgmma is used).

Each launch of a plan (``case_plan``) is compiled as triton's JIT would
compile it at run time (``Prepared.compile_for``: its arguments go through
triton's own binder).

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
# ViT-B/16 attention: (resolution, batch): the batch-256 extreme and batch 1 at
# the three large grids (split counts, stripe tiles and merges differ per size).
CASES = ((224, 256), (1024, 1), (2048, 1), (3072, 1))
TUNINGS = ({}, {"stripe_stages": 3}, {"global_splits": 132}, {"stripe_bm": 64, "stripe_bn": 128, "stripe_warps": 4},
           {"out_warps": 8}, {"merge_launches": False})
#: roles that multiply on tensor cores (a launch holding one must use wgmma)
DOT_ROLES = {"global_context", "global_out", "stripe_attn", "global_partial", "global_tile", "stripe_dkdv", "stripe_dq"}


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


def _vit(res: int, dim: int = 768, heads: int = 12):
    import attentions

    hw = (res // 16, res // 16)
    return attentions.create_attention("elfatt", dim, heads).spec(hw), hw


def forward_launches(dtype) -> list:
    """Every launch of the fast forward over CASES x TUNINGS, both local paths."""
    from attentions.kernels.elfatt_fast import case_plan
    from attentions.kernels.spec import Tuning

    out = []
    for tuning in TUNINGS:
        for local in ("triton", "sdpa"):
            t = Tuning.from_dict(dict(tuning, local=local))
            for res, batch in CASES:
                spec, hw = _vit(res)
                out += case_plan(spec, batch, hw, dtype, t)
    return out


def backward_launches(dtype) -> list:
    """Every launch of the fused backward, and of the forward that keeps its statistics,
    over CASES (the default launches, the tiles merged too, one launch per role) and one
    head of width 128 (split by channels: 64 + 64) and two heads of 128."""
    from attentions.kernels import elfatt_backward, elfatt_fast
    from attentions.kernels.spec import Tuning

    out = []
    for opts in ({}, {"bwd_merge_tiles": True}, {"merge_launches": False}):
        t = Tuning(**opts)
        for dim, heads, (res, batch) in [(768, 12, c) for c in CASES] + [(128, 1, (224, 8)), (256, 2, (224, 8))]:
            spec, hw = _vit(res, dim, heads)
            out += elfatt_backward.case_plan(spec, batch, hw, dtype, t)
            out += elfatt_fast.case_plan(spec, batch, hw, dtype, t, stats=True)
    return out


def report(which: str, dtype_name: str) -> list[dict]:
    import torch

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    seen, out = set(), []
    for p in {"forward": forward_launches, "backward": backward_launches}[which](dtype):
        c = p.compile_for(90)
        if c.hash in seen:
            continue
        seen.add(c.hash)
        regs, stack = resource_usage(c) or (None, None)
        out.append({"kernel": p.kernel.__name__, "roles": sorted(p.roles), "consts": p.consts, "warps": p.warps,
                    "stages": p.stages, "regs": regs, "stack": stack, "shared": c.metadata.shared,
                    "wgmma": "wgmma" in c.asm["ptx"]})
    return out


def run_isolated(which: str, dtype_name: str) -> list[dict] | str:
    """``report`` in a fresh interpreter without TRITON_INTERPRET: the list, or why it could not compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, str(HERE / "sm90.py"), which, dtype_name], capture_output=True, text=True,
                       env=env, cwd=HERE.parents[1], timeout=1800)
    if p.returncode != 0:
        return (p.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(p.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    try:
        print(json.dumps(report(sys.argv[1], sys.argv[2])))
    except Exception as e:  # noqa: BLE001 - the caller decides whether this is a skip or a failure
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        sys.exit(1)
