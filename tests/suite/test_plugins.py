"""A workload is one module + one YAML, for real: a toy workload written in a
temporary folder (outside the package) runs through run.py, a sweep, collect,
report and compare, and nothing else of the suite names it. Attentions know
nothing of the harness."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("op", "layer", "train_proxy", "diffusion")  # "model" is a column name too: matched in context

TOY = textwrap.dedent('''
    """A toy workload: doubles a vector of workload.size ones and reports their sum."""
    from dataclasses import dataclass

    import torch

    from suite.config import setting
    from suite.records import Col
    from suite.workloads import Built, Case, Column, Workload, WorkloadSettings, register_workload


    @dataclass
    class ToySettings(WorkloadSettings):
        size: int = setting(8, "vector length", ge=1)


    @register_workload
    class Toy(Workload):
        name = "toy"
        Settings = ToySettings
        columns = (Col("toy_sum", doc="sum of the doubled vector"),)
        summary = (Column("attention", "variant", ""), Column("status", "outcome", ""),
                   Column("p50 ms", "latency_ms_p50", ".3f"), Column("sum", "toy_sum", ".1f"))
        directions = ("fwd",)

        def run_name(self, cfg):
            return f"toy_{cfg.workload.size}"

        def describe(self, job):
            n = job.cfg.workload.size
            return Case({"size": (1, n), "grid": (1, n)}, n)

        def build(self, case, job, device, precision):
            x = torch.ones(case.data)
            return Built(lambda: x * 2, (x,), float(case.data), 1)

        def extras(self, case, built, out, job, device):
            return {"toy_sum": float(out.sum())}, []
''')


@pytest.fixture
def toy(tmp_path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "toy_workload.py").write_text(TOY)
    conf = tmp_path / "conf" / "workload"
    conf.mkdir(parents=True)
    (conf / "toy.yaml").write_text("# a workload from outside the suite\nname: toy\nmodule: toy_workload\nsize: 8\n")
    return tmp_path


def run(toy: Path, *args, cwd=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(toy / "plugin")])}
    fast = ["attention=sdpa", "warmup=0", "repeats=3", "load_window_s=0", "retries=0", "device=cpu",
            f"hydra.searchpath=[file://{toy / 'conf'}]"]
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, *fast], cwd=cwd or toy, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_workload_from_a_temporary_module_runs_end_to_end(toy):
    p = run(toy, "workload=toy", "workload.size=16")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sum" in p.stdout and "32.0" in p.stdout  # its own summary column
    (folder,) = list((toy / "results" / "runs").glob("*_toy_16_*"))  # its own run-folder name
    row = pd.read_parquet(folder / "records.parquet").iloc[0]
    assert row["status"] == "ok" and row["toy_sum"] == 32.0 and row["workload"] == "toy"
    bad = run(toy, "workload=toy", "workload.size=0")  # its schema's bounds, one line
    assert bad.returncode == 2 and bad.stderr.strip() == "error: workload.size=0 is not valid; valid: a number >= 1"
    sweep = toy / "sweep"
    p = run(toy, "-m", "workload=toy", "workload.size=4,8", f"hydra.sweep.dir={sweep}")
    assert p.returncode == 0, p.stderr[-2000:]
    merged = pd.read_parquet(sweep / "results.parquet")
    assert sorted(merged["toy_sum"]) == [8.0, 16.0] and (sweep / "report" / "report.md").exists()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(toy / "plugin")])}
    cmp = subprocess.run([sys.executable, "-m", "suite.compare", str(sweep), str(sweep)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0 and "toy" in cmp.stdout, cmp.stderr


def test_no_code_outside_the_workloads_names_a_workload():
    """Workload names appear only in suite/workloads/, conf/ and tests (comments and docs aside)."""
    pattern = re.compile(r"""["'](%s)["']|workload\W*(==|=|!=)\W*model""" % "|".join(WORKLOADS))
    found = []
    for path in [*ROOT.glob("suite/**/*.py"), ROOT / "run.py", *ROOT.glob("attentions/**/*.py")]:
        if "workloads" in path.parts:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if pattern.search(code):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_attentions_have_no_parameter_named_workload():
    import ast

    for path in ROOT.glob("attentions/**/*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                assert "workload" not in names, f"{path}:{node.lineno} {node.name}"
