"""The fast ELFATT path's launch plans and how well each launch fills a GPU, on the CPU:

    python -m benchmarks.launch_plan [--sms 132] [--occupancy] [--tuning '{"merge_launches": false}']

For ViT-B/16 attention (12 heads x 64, 6 global + 6 local, block_rows 8) at
1024, 2048 and 3072 px batch 1, and 224 px batch 256 (for information), every
launch of the forward (inference), the forward that keeps the backward's
statistics, and the fused backward: its roles, grid, programs, and waves =
programs / SMs (a wave: every SM has at least one program). ``--occupancy``
also compiles each launch for sm_90 (no GPU needed) and divides by the
programs resident per SM that its registers, shared memory and warps allow:
``full waves`` = programs / (SMs x resident per SM).
No GPU and no tensors are needed: a plan is decided from shapes and strides.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

CASES = ((1024, 1), (2048, 1), (3072, 1), (224, 256))
BATCH1 = tuple(c for c in CASES if c[1] == 1)
DIM, HEADS, PATCH = 768, 12, 16
SM90 = {"regs": 65536, "warps": 64, "ctas": 32, "smem": 233472}  # per SM; smem: 228 KiB


def plans(res: int, batch: int, tuning: dict | None = None, sms: int = 132) -> dict[str, list]:
    """{direction: [Prepared]} for one case: ``fwd`` (inference), ``fwd_keep``, ``bwd``."""
    import torch

    import attentions
    from attentions.kernels import elfatt_backward, elfatt_fast
    from attentions.kernels.spec import Tuning

    hw = (res // PATCH, res // PATCH)
    spec = attentions.create_attention("elfatt", DIM, HEADS).spec(hw)
    t = Tuning.from_dict(tuning)
    return {"fwd": elfatt_fast.case_plan(spec, batch, hw, torch.float16, t, sms),
            "fwd_keep": elfatt_fast.case_plan(spec, batch, hw, torch.float16, t, sms, stats=True),
            "bwd": elfatt_backward.case_plan(spec, batch, hw, torch.float16, t, sms)}


def resident(p) -> tuple[int, dict]:
    """(programs of ``p`` resident per SM on sm_90, its compiled registers/shared memory)."""
    c = p.compile_for(90)
    regs = c.n_regs if getattr(c, "n_regs", None) else _cuobjdump_regs(c)
    threads = 32 * p.warps
    per_warp = -(-max(regs, 1) // 8) * 8 * 32
    fits = [SM90["ctas"], SM90["warps"] // p.warps, SM90["regs"] // (per_warp * p.warps)]
    if c.metadata.shared:
        fits.append(SM90["smem"] // (c.metadata.shared + 1024))
    return max(0, min(fits)), {"regs": regs, "shared": c.metadata.shared, "threads": threads}


def _cuobjdump_regs(compiled) -> int:
    import subprocess
    import tempfile

    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    return int(usage.split("REG:")[1].split()[0])


def rows(cases=CASES, tuning: dict | None = None, sms: int = 132, occupancy: bool = False) -> list[dict]:
    out = []
    for res, batch in cases:
        for direction, launches in plans(res, batch, tuning, sms).items():
            for p in launches:
                row = {"res": res, "batch": batch, "direction": direction, "launch": p.name,
                       "kernel": p.kernel.__name__, "roles": dict(p.roles), "grid": p.grid[:2] if p.grid[1] > 1
                       else p.grid[:1], "programs": p.programs, "waves": p.programs / sms, "warps": p.warps}
                if occupancy:
                    per_sm, usage = resident(p)
                    row |= usage | {"resident_per_sm": per_sm, "full_waves": p.programs / (sms * max(per_sm, 1))}
                out.append(row)
    return out


def table(rs: list[dict]) -> list[str]:
    occ = "resident_per_sm" in rs[0]
    head = "| px | batch | pass | launch (roles: programs) | grid | programs | waves |"
    head += " regs | smem KiB | resident/SM | full waves |" if occ else ""
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rs:
        roles = ", ".join(f"{k}: {v}" for k, v in r["roles"].items())
        line = (f"| {r['res']} | {r['batch']} | {r['direction']} | {roles} | {'x'.join(map(str, r['grid']))} | "
                f"{r['programs']} | {r['waves']:.2f} |")
        if occ:
            line += f" {r['regs']} | {r['shared'] / 1024:.0f} | {r['resident_per_sm']} | {r['full_waves']:.2f} |"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sms", type=int, default=132)
    ap.add_argument("--occupancy", action="store_true", help="compile each launch for sm_90 for its residency")
    ap.add_argument("--tuning", default="{}", help="a JSON mapping of Tuning knobs")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the plans of compiled kernels
    rs = rows(tuning=json.loads(a.tuning), sms=a.sms, occupancy=a.occupancy)
    if a.json:
        print(json.dumps(rs))
        return 0
    print(f"# Launch plans, ViT-B/16 attention (12 x 64, 6 global + 6 local, block_rows 8), fp16, "
          f"{a.sms} SMs, tuning {a.tuning}")
    print("\n".join(table(rs)))
    short = [r for r in rs if (r["res"], r["batch"]) in BATCH1 and r["programs"] < a.sms]
    print(f"\nlaunches under one wave at batch 1: {len(short)}" +
          "".join(f"\n  {r['res']} px {r['direction']} {r['launch']}: {r['programs']}" for r in short))
    return 1 if short else 0


if __name__ == "__main__":
    sys.exit(main())
