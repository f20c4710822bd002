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
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = {"env": 25, "correct": 75, "fwd": 75, "fwd_bwd": 60, "kernels": 30, "host": 20, "nvml": 15, "harness": 80}


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

from .probe_steps import STEP_FUNCTIONS, first_line, variants


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
        STEP_FUNCTIONS[name](out)
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
