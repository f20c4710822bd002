"""One command that checks a GPU: ``python -m suite.gpu_check [--out DIR] [--budget-min 15]``.

In about 15 minutes on one H100 or H200 it runs, each step in its own process
with its own time limit, in this order:

1. ``pytest -m gpu``: every GPU test (kernels against float64, SDPA backends,
   optional packages, which skip with their reason when missing);
2. the fast-ELFATT benchmark (``benchmarks.elfatt_fast``) at 224 px (batch
   256), 1024, 2048 and 3072 px, fp16 and bf16, with the tuning variants and
   CUDA-graph replays; its targets with measured ratios and verdicts;
3. the core of ``experiment=paper_speedup``: the paper's baselines and ELFATT
   at 512-3072 px, fp16, op and layer, with the report and figures;
4. ``swin_t`` and ``cswin_t`` at 224 px, batch 512, amp, with elfatt, their
   own window attention and sdpa;
5. when ``timm`` is importable, timm's ``swin_tiny_patch4_window7_224`` and
   ``vit_base_patch16_224`` against the suite's ``swin_t`` / ``vit_b`` with
   exact attention, same batch and precision: they should agree within ~15%.

Everything goes under ``results/reference/<gpu-name>/`` (or ``--out``) with a
README of the environment and each step's log. Without CUDA it refuses with
one line (exit 2). A step that fails or runs out of time is reported and the
next one runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ["attention=vanilla_lepe,sdpa_flash,sdpa_cudnn,elfatt,elfatt_local,elfatt_global",
        "resolution=512,1024,2048,3072", "precision=fp16", "workload=op,layer"]
MODELS = ["workload=model", "model=swin_t,cswin_t", "attention=elfatt,swin,cswin,sdpa", "resolution=224",
          "batch_size=512", "precision=amp", "model.fidelity=false", "min_time_s=2"]


def environment_readme(out: Path) -> str:
    import torch

    from .device import Nvml, environment

    device = torch.device("cuda")
    env = environment(device) | Nvml(device).clocks()
    try:
        import triton

        env["triton_version"] = triton.__version__
    except ImportError:
        env["triton_version"] = "not installed"
    env["gpus_visible"] = torch.cuda.device_count()
    lines = [f"# GPU check: {env['device_name']}", "", f"Written by `python -m suite.gpu_check` on "
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Every file in this folder was produced by that run.", "",
             "| fact | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(env.items())]
    (out / "README.md").write_text("\n".join(lines) + "\n")
    return str(env["device_name"])


def step(name: str, cmd: list[str], out: Path, limit_s: float) -> dict:
    """Run one step in its own process; its output goes to ``<name>.log``."""
    print(f"== {name}: {' '.join(cmd)} (limit {limit_s / 60:.1f} min)", flush=True)
    log = out / f"{name}.log"
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)
    try:
        with log.open("w") as f:
            p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=max(1, limit_s))
        status = "ok" if p.returncode == 0 else f"failed (exit {p.returncode})"
    except subprocess.TimeoutExpired:
        status = f"stopped at its {limit_s / 60:.1f} min limit"
    took = time.perf_counter() - t0
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
    print(f"   {status} in {took:.0f} s; last line: {tail[0][:160] if tail else '(none)'}", flush=True)
    return {"step": name, "status": status, "seconds": round(took, 1), "log": log.name}


def timm_comparison(out: Path) -> list[str]:
    """timm's models against the suite's at the same batch and precision (images/s, eager, amp)."""
    import timm
    import torch

    from .measure import time_fn
    from .models import build_model, plan_model
    from .models.config import ModelConfig
    from omegaconf import OmegaConf

    device, lines = torch.device("cuda"), ["| model | batch | timm img/s | suite img/s | suite / timm | verdict |",
                                           "|---|---|---|---|---|---|"]
    for timm_name, ours, batch in (("swin_tiny_patch4_window7_224", "swin_t", 512), ("vit_base_patch16_224", "vit_b", 256)):
        mc = ModelConfig(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "model" / f"{ours}.yaml")))
        attention = "swin" if ours == "swin_t" else "sdpa"
        models = {"timm": timm.create_model(timm_name, pretrained=False),
                  "suite": build_model(plan_model(mc, attention, {}, (224, 224)))}
        x = torch.randn(batch, 3, 224, 224, device=device)
        rate = {}
        for key, model in models.items():
            model = model.to(device).eval()

            def fn(model=model):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                    return model(x)

            rate[key] = batch / (time_fn(fn, device, warmup=5, min_time_s=2).p50_ms / 1e3)
            del model
            torch.cuda.empty_cache()
        ratio = rate["suite"] / rate["timm"]
        verdict = "agree (within 15%)" if abs(ratio - 1) <= 0.15 else "differ by more than 15%: investigate"
        lines.append(f"| {ours} vs {timm_name} | {batch} | {rate['timm']:.0f} | {rate['suite']:.0f} | {ratio:.2f} | "
                     f"{verdict} |")
    (out / "timm_comparison.md").write_text("\n".join(lines) + "\n")
    return lines


def plan(out: Path) -> list[tuple[str, list[str], float]]:
    """(name, command, share of the budget) of every step."""
    py = sys.executable
    return [
        ("pytest_gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs"], 0.2),
        ("bench_elfatt", [py, "-m", "benchmarks.elfatt_fast", str(out / "bench_elfatt.csv"), "--tuning", "--graphs",
                          "--fwd-bwd"],
         0.3),
        ("paper_speedup", [py, "run.py", "-m", "experiment=paper_speedup", *CORE,
                           f"hydra.sweep.dir={out / 'paper_speedup'}"], 0.25),
        ("models", [py, "run.py", "-m", *MODELS, "device=cuda", f"hydra.sweep.dir={out / 'models'}"], 0.15),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m suite.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="where results go (default: results/reference/<gpu-name>/)")
    ap.add_argument("--budget-min", type=float, default=15.0, help="the whole check's time budget in minutes")
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"error: suite.gpu_check needs a CUDA GPU; torch {torch.__version__} sees none. Nothing was run.",
              file=sys.stderr)
        return 2
    from .figures import slug

    name = torch.cuda.get_device_name(0)
    out = Path(args.out) if args.out else ROOT / "results" / "reference" / slug(name)
    out.mkdir(parents=True, exist_ok=True)
    environment_readme(out)
    start, budget = time.perf_counter(), args.budget_min * 60
    done = []
    for step_name, cmd, share in plan(out):
        left = budget - (time.perf_counter() - start)
        done.append(step(step_name, cmd, out, min(share * budget, left - 60)) if left > 90 else
                    {"step": step_name, "status": "not run: out of time", "seconds": 0, "log": ""})
    try:
        lines = timm_comparison(out) if budget - (time.perf_counter() - start) > 60 else ["timm: not run: out of time"]
    except ImportError:
        lines = ["timm is not installed here: the comparison with timm's models was not run"]
    except Exception as e:  # noqa: BLE001 - a comparison that fails is reported, the check goes on
        lines = [f"timm comparison failed: {type(e).__name__}: {e}"]
    (out / "steps.json").write_text(json.dumps(done, indent=1))
    summary(out, done, lines, time.perf_counter() - start)
    return 0 if all(d["status"] == "ok" for d in done) else 1


def summary(out: Path, done: list[dict], timm_lines: list[str], took: float) -> None:
    targets_file = out / "bench_elfatt_targets.json"
    targets = []
    if targets_file.exists():
        rows = json.loads(targets_file.read_text())
        targets = ["| target (fp16, op) | measured | verdict |", "|---|---|---|"]
        targets += [f"| {r['target']} | {r['measured']} | {r['verdict']} |" for r in rows]
    print("\n# GPU check summary", f"({took / 60:.1f} min)", flush=True)
    for d in done:
        print(f"- {d['step']}: {d['status']} ({d['seconds']} s, log {d['log']})")
    print("\n".join(["", "Fast ELFATT targets:", *(targets or ["(the benchmark wrote no targets)"]), "",
                     "timm comparison:", *timm_lines, "", f"everything is in {out}"]), flush=True)


if __name__ == "__main__":
    sys.exit(main())
