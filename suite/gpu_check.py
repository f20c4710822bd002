"""One command that checks a GPU and cannot lose what it measured:
``python -m suite.gpu_check [--out DIR] [--minutes 10] [--plan] [--dry-run]``.

Steps, most valuable first, each a sweep of the suite's own pipeline (so every
finished case is a row on disk at once, with its conditions) in its own
process under its own time limit:

1. ``correct``: ELFATT's fast path on this GPU against float64, forward and
   backward (layer: the weights' gradients too), fp16 and bf16;
2. ``targets``: experiment ``fast_elfatt`` (forward and forward+backward at
   224 px batch 256 and 1024-3072 px, beside torch SDPA's backends, eager and
   CUDA-graph timing) and its targets table;
3. ``harness``: the GPU-only paths of the harness (NVML columns, energy,
   throttle verdicts, ``timing=kernels`` and ``cuda_graph``);
4. ``model``: a backbone under amp (swin_t with ELFATT and with its windows);
5. ``pytest_gpu``: the GPU-marked tests;
6. ``extras``: fp32 on the fast path and the optional packages.

``--minutes`` is the budget (default 10): each step's time is estimated from
its jobs and Triton compiles (``--plan`` prints the plan and needs no GPU); a
step gets its estimate with a margin, a step that no longer fits is cut and
said so. A step stopped at its limit gets SIGTERM (its running case becomes
an ``interrupted`` row) and keeps every row it wrote. ``summary.md`` is
rewritten after every step, so it is there whatever happens. Steps resume:
running the command again measures only what is missing.

``--dry-run`` runs the same steps on the CPU at tiny sizes (Triton's
interpreter, a fake NVML): every line of the plumbing, no GPU numbers.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .args import OneLineParser

ROOT = Path(__file__).resolve().parents[1]
STARTUP_S = 12.0  # python, torch, Hydra: a step's fixed cost (a run.py process on the H200 machine: 10-17 s)
COMPILE_S = 3.0  # one Triton compile, first call (measured on an H200: 1.3-8 s each, fp16)


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    args: tuple[str, ...]  # run.py arguments (a sweep), or ("pytest", ...)
    jobs: int  # cases the sweep measures
    job_s: float  # seconds a case takes once compiled (estimate)
    compiles: int = 0  # distinct Triton compiles it triggers
    dry: tuple[str, ...] = ()  # overrides that make it tiny on a CPU

    def estimate_s(self, dry: bool) -> float:
        if dry:
            return STARTUP_S + self.jobs * 2.0
        return STARTUP_S + self.jobs * self.job_s + self.compiles * COMPILE_S


DRY = ("device=cpu", "precision=fp32", "resolution=64", "batch_size=1", "min_time_s=0.05", "warmup=1", "retries=0",
       "load_window_s=0", "accuracy_max_tokens=64", "resume=true")
SMALL = ("workload.dim=32", "workload.heads=2")  # a dry run's attention layer
STEPS = (  # each a sweep preset of conf/experiment/ (what it measures is said there), most valuable first
    Step("correct", "fast path vs float64, fp16 and bf16", ("-m", "experiment=gpu_correct"), 8, 5.0, 16,
         dry=SMALL),
    Step("targets", "fast_elfatt: fwd, fwd+bwd vs SDPA",
         ("-m", "experiment=fast_elfatt", "attention=elfatt_fast,sdpa_flash,sdpa_cudnn"), 48, 5.0, 16,
         dry=(*SMALL, "attention=elfatt_fast,sdpa_flash", "resolution=64", "batch_size=1")),
    Step("harness", "NVML, energy, verdicts, timing modes", ("-m", "experiment=gpu_harness"), 6, 5.0,
         0, dry=(*SMALL, "attention=elfatt_fast,sdpa_flash", "timing=eager,kernels")),
    Step("model", "swin_t under amp", ("-m", "experiment=gpu_model"), 2,
         15.0, 8, dry=("model=vit_t", "model.embed_dim=24", "model.depths=[1]", "model.fidelity_images=2",
                       "attention=elfatt,sdpa")),
    Step("pytest_gpu", "the GPU-marked tests", ("pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"), 1, 200.0, 60),
    Step("extras", "fp32, optional packages", ("-m", "experiment=gpu_extras"), 10, 5.0, 8,
         dry=(*SMALL, "attention=elfatt_fast,flash_attn,xformers")),
)


@dataclass
class Planned:
    step: Step
    cap_s: float  # 0: cut
    why: str = ""
    status: str = "planned"
    took_s: float = 0.0
    rows: dict = field(default_factory=dict)


def plan(steps, budget_s: float, dry: bool) -> list[Planned]:
    """Each step in order gets 1.25x its estimate (at least a minute) while the budget lasts; the
    last step that starts gets what is left; the rest are cut."""
    out, left = [], budget_s
    for s in steps:
        want = max(60.0, 1.25 * s.estimate_s(dry))
        if left >= 60:
            cap = min(want, left)
            out.append(Planned(s, cap, "" if cap >= want else f"shortened to the {cap / 60:.1f} min left"))
            left -= cap
        else:
            out.append(Planned(s, 0.0, f"cut: its estimate ({s.estimate_s(dry) / 60:.1f} min) is past the budget"))
    return out


def plan_lines(planned: list[Planned], budget_s: float, dry: bool) -> list[str]:
    """The plan, one line per step, 80 columns."""
    lines = [f"GPU check plan ({'dry run on the CPU' if dry else 'on the GPU'}), budget {budget_s / 60:.1f} min:"]
    for p in planned:
        cap = f"limit {p.cap_s / 60:.1f} min" if p.cap_s else "cut: no time left"
        est = f"~{p.step.estimate_s(dry) / 60:.1f} min"
        line = f"  {p.step.name:<10} {est:>9}  {cap:<17} {p.step.what}"
        lines.append(line if len(line) <= 79 else line[:78] + "\u2026")
    return lines


def command(step: Step, out: Path, dry: bool) -> list[str]:
    if step.args[0] == "pytest":
        return [sys.executable, "-m", *step.args, f"--junitxml={out / 'pytest_gpu.xml'}"]
    args = list(step.args)
    if dry:  # tiny and on the CPU; a dry override replaces the preset's own
        keys = {a.split("=", 1)[0] for a in (*DRY, *step.dry)}
        args = [a for a in args if a.split("=", 1)[0] not in keys] + list(DRY) + list(step.dry)
    return [sys.executable, str(ROOT / "run.py"), *args, f"hydra.sweep.dir={out / step.name}",
            "hydra.callbacks.sweep.report=false", "hydra.callbacks.sweep.progress=false"]


def run_step(p: Planned, out: Path, env: dict, dry: bool) -> None:
    """Run one step under its limit; SIGTERM at the limit (the running case is marked), SIGKILL 30 s later."""
    t0 = time.perf_counter()
    with (out / f"{p.step.name}.log").open("w") as log:
        proc = subprocess.Popen(command(p.step, out, dry), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=p.cap_s)
            p.status = "done" if code == 0 else f"failed (exit {code}; see {p.step.name}.log)"
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            p.status = f"stopped at its {p.cap_s / 60:.1f} min limit (rows written before it are kept)"
    p.took_s = time.perf_counter() - t0
    p.rows = rows_of(out / p.step.name)


def rows_of(folder: Path) -> dict:
    """Rows a step wrote, by status."""
    from .storage import read_tree

    df = read_tree(folder) if folder.exists() else None
    return {} if df is None or df.empty else df["status"].value_counts().to_dict()


def summary(planned: list[Planned], out: Path, budget_s: float, dry: bool, started: float) -> str:
    from .storage import read_tree
    from .targets import section

    lines = [f"# GPU check{' (dry run on the CPU: no GPU numbers)' if dry else ''}", "",
             f"Written by `python -m suite.gpu_check` at {time.strftime('%Y-%m-%d %H:%M:%S')}, "
             f"{(time.perf_counter() - started) / 60:.1f} min into a {budget_s / 60:.1f} min budget. Every row "
             f"is in its step's folder here (`python -m suite.collect {out}` merges them).", "",
             "| step | what | status | minutes | rows |", "|---|---|---|---|---|"]
    for p in planned:
        rows = ", ".join(f"{n} {s}" for s, n in sorted(p.rows.items())) or "-"
        status = p.status if p.cap_s else p.why
        lines.append(f"| {p.step.name} | {p.step.what} | {status} | {p.took_s / 60:.1f} | {rows} |")
    cut = [p for p in planned if not p.cap_s or p.status.startswith(("stopped", "failed", "planned"))]
    if cut:
        lines += ["", "Not complete: " + "; ".join(f"{p.step.name}: {p.why or p.status}" for p in cut) + "."]
    targets = out / "targets"
    if targets.exists():
        df = read_tree(targets)
        lines += ["", *(section(df) if not df.empty else ["(the targets step wrote no rows)"])]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m suite.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="where results go (default: results/reference/<gpu-name>/, or results/gpu_check_dry)")
    ap.add_argument("--minutes", type=float, default=10.0, help="the whole check's budget in minutes (default 10)")
    ap.add_argument("--plan", action="store_true", help="print the plan and exit (no GPU needed)")
    ap.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        print(f"error: --minutes {args.minutes} is not valid; valid: a positive number of minutes", file=sys.stderr)
        return 2
    budget = args.minutes * 60
    planned = plan(STEPS, budget, args.dry_run)
    if args.plan:
        print("\n".join(plan_lines(planned, budget, args.dry_run)))
        return 0
    out, env = where(args)
    if out is None:
        return 2
    started = time.perf_counter()
    print("\n".join(plan_lines(planned, budget, args.dry_run)), flush=True)
    for p in planned:
        if p.cap_s:
            left = budget - (time.perf_counter() - started)
            p.cap_s = min(p.cap_s, max(0.0, left))
            if p.cap_s < 30:
                p.cap_s, p.why = 0.0, "cut: the steps before it used the budget"
            else:
                print(f"== {p.step.name}: {p.step.what} (limit {p.cap_s / 60:.1f} min)", flush=True)
                run_step(p, out, env, args.dry_run)
                print(f"   {p.status} in {p.took_s:.0f} s; rows: {p.rows or 'none'}", flush=True)
        summary(planned, out, budget, args.dry_run, started)
    print(summary(planned, out, budget, args.dry_run, started), end="")
    return 0 if all(p.status == "done" for p in planned) else 1


def where(args) -> tuple[Path | None, dict]:
    """The output folder and the steps' environment; None (and one line) when this machine cannot run it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONUNBUFFERED": "1"}
    if args.dry_run:
        from .device import FAKE_NVML

        env |= {"TRITON_INTERPRET": "1", FAKE_NVML: "1"}
        out = Path(args.out or ROOT / "results" / "gpu_check_dry")
    else:
        import torch

        if not torch.cuda.is_available():
            print(f"error: suite.gpu_check needs a CUDA GPU; torch {torch.__version__} sees none (python -m "
                  f"suite.gpu_check --dry-run runs the same steps on the CPU). Nothing was run.", file=sys.stderr)
            return None, env
        name = torch.cuda.get_device_name(0)
        out = Path(args.out) if args.out else ROOT / "results" / "reference" / "".join(
            c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out.mkdir(parents=True, exist_ok=True)
    return out, env


if __name__ == "__main__":
    sys.exit(main())
