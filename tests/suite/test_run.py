"""Configs compose; run.py works end to end; bad input gets one clear line and exit 2."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose

import attentions as A

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["resolution=112", "workload.dim=32", "workload.heads=2", "warmup=1", "repeats=3", "accuracy_max_tokens=64", "load_window_s=0"]


def groups():
    """(group, option) for every YAML in every config group (experiments excluded:
    they are composed by their own tests)."""
    for d in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "hydra")):
        for f in sorted(d.glob("*.yaml")):
            yield d.name, f.stem


@pytest.mark.parametrize("group,option", list(groups()))
def test_every_config_composes(hydra_conf, group, option):
    cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    assert cfg[group] is not None
    assert isinstance(cfg.resolution, str)  # "224" or "HxW"


def test_bad_typed_override_is_clear(hydra_conf):
    with pytest.raises(Exception, match="batch_size"):
        compose(config_name="config", overrides=["batch_size=big"])


def run(*args, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def records_in(path: Path) -> pd.DataFrame:
    files = sorted(path.rglob("records.parquet"))
    assert files, f"no records under {path}"
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


@pytest.mark.parametrize("name", A.list_attentions())
@pytest.mark.parametrize("workload", ["op", "layer"])
def test_each_attention_in_process(run_job, tmp_path, name, workload):
    (row,) = run_job([f"attention={name}", f"workload={workload}", "device=cpu", *TINY], tmp_path)
    assert row.attention == name and row.variant == name and row.tokens == 49 and row.device == "cpu"
    assert row.status in ("ok", "unsupported", "unavailable"), row.reason
    if row.status == "ok":
        assert row.latency_ms_p10 <= row.latency_ms_p50 <= row.latency_ms_p90
        assert row.flops_analytic > 0 and row.repeats == 3 and row.peak_mem_mib > 0
        assert row.rel_err_vs_fp64 < 1e-4
    else:
        assert row.reason
    assert len(records_in(tmp_path)) == 1 and (tmp_path / "records.csv").exists()


def test_same_seed_same_numbers(run_job, tmp_path):
    """Weights and inputs are seeded: two runs give identical accuracy proxies."""
    a, b = (run_job(["attention=elfatt", *TINY], tmp_path / str(i))[0] for i in range(2))
    assert a.rel_err_vs_exact == b.rel_err_vs_exact and a.cos_sim_vs_exact == b.cos_sim_vs_exact


@pytest.mark.slow
def test_run_py_prints_a_summary(tmp_path):
    p = run("attention=elfatt", "attention.block_rows=7", *TINY, f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "elfatt[block_rows=7]" in p.stdout and "records:" in p.stdout
    assert max(len(line) for line in p.stdout.splitlines()[:-1]) <= 80  # the table fits 80 columns


@pytest.mark.slow
def test_bad_case_in_a_sweep_is_an_invalid_row(tmp_path):
    p = run("-m", "attention.block_rows=7,5", *TINY, f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    df = records_in(tmp_path)
    status = {('"block_rows": 7' in o): s for o, s in zip(df.attention_options, df.status)}
    assert status == {True: "ok", False: "invalid"}
    assert "valid block_rows: [1, 7]" in df[df.status == "invalid"].iloc[0].reason
