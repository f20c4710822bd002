"""Sweeps: presets compose, resume, skip-before-launch, failures as rows, submitit."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

import attentions as A
from suite import job as job_module
from suite.device import environment, resolve_precision
from suite.job import make_job
from suite.records import Record, base_fields, write_records
from suite.sweep.callbacks import pin_local_gpu
from suite.sweep.resume import available_bytes, count_jobs, resumed_record, skip_reason
from suite.workloads import get_workload
from suite.workloads.single import SingleAttention

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["device=cpu", "precision=fp32", "workload.dim=32", "workload.heads=2", "warmup=1", "repeats=3", "min_time_s=0.01",
        "accuracy_max_tokens=64", "load_window_s=0"]


def _sweep_params(experiment: str) -> dict:
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    return dict(OmegaConf.create(text).hydra.sweeper.params)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_preset_composes_with_each_of_its_attentions(hydra_conf, experiment):
    params = _sweep_params(experiment)
    assert str(compose(config_name="config", overrides=[f"experiment={experiment}"]).resolution)
    for v in str(params.get("attention", "")).split(","):
        overrides = [f"experiment={experiment}"] + ([f"attention={v}"] if v else [])
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        assert cfg.hydra.sweep.dir == f"results/sweeps/{experiment}", "presets need a stable sweep dir to resume"
        assert str(cfg.resume).lower() == "true"
        opts = {k: val for k, val in OmegaConf.to_container(cfg.attention).items() if k != "name"}
        A.create_attention(cfg.attention.name, 64, 4, **opts)  # every option is a real constructor option


def test_paper_preset_covers_the_papers_baselines():
    p = _sweep_params("paper_speedup")
    assert set(p["attention"].split(",")) >= {"vanilla_lepe", "sdpa_flash", "sdpa_cudnn", "efficient_linear", "swin",
                                              "cswin_stripe8", "neighborhood", "elfatt"}
    assert p["resolution"] == "224,384,512,768,1024,1536,2048,3072,4096"
    assert set(p["precision"].split(",")) == {"fp16", "bf16"}
    assert set(p["workload"].split(",")) == {"op", "layer", "model"}


def test_count_jobs_follows_the_basic_sweeper():
    params = {"attention": "a,b,c", "resolution": "1,2"}
    assert count_jobs(params, []) == 6
    assert count_jobs(params, ["resolution=5", "workload.dim=8"]) == 3  # command line replaces a param
    assert count_jobs({}, ["workload=op,layer", "precision=fp32,bf16"]) == 4


def _job(hydra_conf, *extra, run_dir="."):
    overrides = TINY + ["attention=vanilla", "resolution=64", *extra]
    cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choice = cfg.hydra.runtime.choices.attention
    with open_dict(cfg):
        del cfg["hydra"]
    job = make_job(cfg, run_dir, choice=choice, overrides=overrides)
    wl = get_workload("layer")
    case = wl.describe(job)
    device = torch.device("cpu")
    precision = resolve_precision("fp32", device)
    base = base_fields(job, dict(case.facts), device, precision.name, environment(device),
                       job_module.case_identity(job, wl, device, precision.name))
    return job, wl, case, device, precision, base


def test_skip_estimate_tiny_limit(hydra_conf):
    job, wl, case, device, precision, _ = _job(hydra_conf, "memory_limit_mib=0.001")
    reason = skip_reason(job, wl, case, device, precision)
    assert "memory_estimate" in reason and "memory_limit_mib" in reason
    assert skip_reason(*_job(hydra_conf, "memory_limit_mib=1000")[:5]) == ""
    assert skip_reason(*_job(hydra_conf, "memory_limit_mib=0.001", "skip_unfit=false")[:5]) == ""


def test_skip_estimate_against_this_machines_ram(hydra_conf):
    """Vanilla attention at 8192 px (N = 262144, 12 heads) needs > 6 TB of scores: never fits in RAM."""
    job, wl, case, device, precision, _ = _job(hydra_conf, "workload.dim=768", "workload.heads=12", "resolution=8192")
    assert case.data.memory_estimate(1, (512, 512), 4) > 6e12
    assert "MemAvailable" in skip_reason(job, wl, case, device, precision)
    assert available_bytes(device)[0] > 0


def test_resume_finds_only_ok_rows_of_the_same_settings(hydra_conf, tmp_path):
    job, *_, base = _job(hydra_conf, "resume=true", run_dir=tmp_path)
    old = tmp_path / "resolution=64"
    write_records([Record(**base, status="oom", reason="earlier")], old)
    assert resumed_record(job, base) is None  # not ok: measure again
    write_records([Record(**base, status="ok", latency_ms_p50=1.5)], old)
    assert resumed_record(job, base).latency_ms_p50 == 1.5
    off, *_ = _job(hydra_conf, "resume=false", run_dir=tmp_path)  # resume off: always measure
    assert resumed_record(off, base) is None
    other, *_, other_base = _job(hydra_conf, "resume=true", "seed=1", run_dir=tmp_path)  # another case
    assert resumed_record(other, other_base) is None
    flagged = Record(**base, status="ok", latency_ms_p50=9.0, timing_quality="contended")
    write_records([flagged], tmp_path / "again")
    trusted, *_ = _job(hydra_conf, "resume=trusted", run_dir=tmp_path)
    assert resumed_record(job, base).latency_ms_p50 == 9.0  # resume=true: the newest ok row, flagged or not
    assert resumed_record(trusted, base).latency_ms_p50 == 1.5  # trusted: the flagged timing is not done
    assert resumed_record(job, dict(base, device_name="another CPU")) is None  # measured on another device


def test_oom_while_measuring_is_a_row(run_job, tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB (simulated)")

    monkeypatch.setattr(SingleAttention, "build", oom)
    rows = run_job(TINY + ["attention=vanilla", "resolution=64"], tmp_path)
    assert [r.status for r in rows] == ["oom"] and "Tried to allocate" in rows[0].reason
    assert pd.read_parquet(tmp_path / "records.parquet")["status"].tolist() == ["oom"]


def test_an_error_row_keeps_the_reason_and_traceback(run_job, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("no such thing")

    monkeypatch.setattr(SingleAttention, "build", broken)
    (row,) = run_job(TINY + ["attention=vanilla", "resolution=64"], tmp_path)
    assert row.status == "error" and "KeyError" in row.reason and "error.log" in row.reason
    assert "no such thing" in (tmp_path / "error.log").read_text()


def run_in_process() -> None:
    """Execute run.py as ``__main__`` in this process, exactly like ``python run.py``
    (Hydra then finds conf/ next to it, and monkeypatches apply to the jobs)."""
    spec = importlib.util.spec_from_file_location("__main__", ROOT / "run.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_exception_outside_measuring_becomes_a_row_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """In-process multirun (basic launcher): job 1 of 2 raises in environment(); both rows exist."""
    real = job_module.environment
    calls = []

    def flaky(device):
        calls.append(device)
        if len(calls) == 1:
            raise RuntimeError("simulated failure outside measure_case")
        return real(device)

    monkeypatch.setattr(job_module, "environment", flaky)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", *TINY, "attention=vanilla", "resolution=32,64",
                                      f"hydra.sweep.dir={tmp_path}", "hydra.callbacks.sweep.report=false"])
    GlobalHydra.instance().clear()
    run_in_process()
    GlobalHydra.instance().clear()
    rows = pd.concat([pd.read_parquet(f) for f in sorted(tmp_path.rglob("records.parquet"))])
    assert sorted(rows["status"]) == ["error", "ok"]
    assert "simulated failure" in rows.loc[rows["status"] == "error", "reason"].iloc[0]
    statuses = [json.loads(f.read_text())["statuses"] for f in tmp_path.rglob("job_status.*.json")]
    assert sorted(s[0] for s in statuses) == ["error", "ok"]


def test_pin_local_gpu(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert pin_local_gpu(6) == "2" and os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert pin_local_gpu(6) is None  # one GPU: nothing to spread
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert pin_local_gpu(1) is None  # Slurm assigns the GPU itself


def _run(*args, timeout=240):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_sweep_end_to_end_then_resume(tmp_path):
    p = _run("-m", "experiment=smoke", f"hydra.sweep.dir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 24 and (df["status"] == "ok").all()
    assert {"elfatt_local", "elfatt_global", "vanilla_lepe"} <= set(df["variant"])  # the paper's own baselines
    assert df["speedup_vs_vanilla"].notna().sum() == 24
    report = tmp_path / "report"
    assert (report / "report.md").exists() and len(list(report.glob("*.png"))) >= 4
    assert "24/24 done" in p.stdout and "sweep finished" in p.stdout
    assert "records:" not in p.stdout  # one line per job, not a summary table per job
    # The same sweep again, narrowed to two of its cases: both are resumed, not measured.
    case_dir = tmp_path / "attention=elfatt,resolution=64,workload=op"  # one folder per case
    before = pd.read_parquet(case_dir / "records.parquet")
    p = _run("-m", "experiment=smoke", "attention=elfatt", "resolution=64", f"hydra.sweep.dir={tmp_path}",
             "hydra.callbacks.sweep.report=false")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("[resume] ok row for this case already in") == 2
    after = pd.read_parquet(case_dir / "records.parquet")
    assert after["timestamp"].tolist() == before["timestamp"].tolist()
    assert len(list(tmp_path.rglob("records.parquet"))) == 24


@pytest.mark.slow
def test_submitit_local_launcher_on_cpu(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")
    p = _run("-m", "experiment=smoke", "attention=elfatt", "resolution=64", "workload=op,layer",
             "hydra/launcher=local_gpus", "hydra.launcher.gpus_per_node=0", "hydra.launcher.timeout_min=5",
             f"hydra.sweep.dir={tmp_path}", "hydra.callbacks.sweep.report=false", "resume=false")
    assert p.returncode == 0, p.stderr[-3000:]
    rows = pd.concat([pd.read_parquet(f) for f in tmp_path.rglob("records.parquet")])
    assert sorted(rows["workload"]) == ["layer", "op"] and (rows["status"] == "ok").all()
    assert "2/2 done" in p.stdout  # the launching process saw both jobs finish
    assert (tmp_path / "results.parquet").exists()
