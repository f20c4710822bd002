"""Sweeps on a real Slurm cluster (``hydra/launcher=slurm_cpu``), against Slurm itself.

Needs a cluster that answers here: ``bash .ci/slurm/start.sh`` makes one on
this machine (a `debug` partition, default, and an `urgent` one whose jobs
preempt debug jobs, REQUEUE). Skipped, with the reason, when ``sinfo`` is
missing or no node is up; with ``SLURM_TESTS=required`` (CI) that fails
instead. Run: ``pytest tests/cluster -m slurm`` (about 3 minutes on 2 cores).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from suite.sweep import lock

ROOT = Path(__file__).resolve().parents[2]
TINY = ["workload=op", "workload.dim=32", "workload.heads=2", "warmup=0", "min_time_s=0", "accuracy=false", "flops_count=false",
        "retries=0", "device=cpu", "precision=fp32", "hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug",
        "hydra.callbacks.sweep.report=false", "hydra.callbacks.sweep.progress=false"]


def _cluster_problem() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not found); start one with: bash .ci/slurm/start.sh"
    try:
        p = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as e:
        return f"sinfo does not answer ({e}); start the cluster with: bash .ci/slurm/start.sh"
    states = set(p.stdout.split())
    if p.returncode != 0 or not states & {"idle", "mixed", "allocated"}:
        return (f"no Slurm node up in partition debug (sinfo: {(p.stdout or p.stderr).strip() or 'nothing'}); "
                f"start the cluster with: bash .ci/slurm/start.sh")
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401 - the cluster extra
    except ImportError:
        return "hydra-submitit-launcher is not installed (pip install -e '.[cluster]')"
    return None


PROBLEM = _cluster_problem()  # once: an installed but stopped cluster takes sinfo ~10 s to give up on
REQUIRED = os.environ.get("SLURM_TESTS") == "required"  # CI: no cluster is a failure, not a skip
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(PROBLEM is not None and not REQUIRED, reason=str(PROBLEM))]


@pytest.fixture(autouse=True)
def _cluster():
    if PROBLEM is not None:
        pytest.fail(f"SLURM_TESTS=required: {PROBLEM}")


def sweep(*args: str, sweep_dir: Path, wait: bool = True, timeout_min: int = 5):
    cmd = [sys.executable, "run.py", "-m", *TINY, f"hydra.launcher.timeout_min={timeout_min}",
           f"hydra.sweep.dir={sweep_dir}", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)


def sacct(*args: str) -> list[dict]:
    fields = ["JobID", "State", "Partition", "AllocCPUS", "NodeList"]
    out = subprocess.run(["sacct", "-n", "-P", "-o", ",".join(fields), *args], capture_output=True, text=True,
                         timeout=30).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def submitted_ids(sweep_dir: Path) -> list[str]:
    """The Slurm job ids submitit used (``<array>_<task>``, or ``<job>`` alone): its job folders under .submitit."""
    folder = sweep_dir / ".submitit"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / f"{p.name}_submitted.pkl").exists())


def wait_submitted(sweep_dir: Path, n: int, limit_s: float = 60) -> list[str]:
    until = time.time() + limit_s
    while len(ids := submitted_ids(sweep_dir)) < n:
        assert time.time() < until, f"the sweep submitted no {n} jobs in {limit_s} s"
        time.sleep(0.3)
    return ids


def rows(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "results.csv")


def wait_running(job_id: str, limit_s: float = 60) -> None:
    until = time.time() + limit_s
    while time.time() < until:
        if any(r["State"] == "RUNNING" for r in sacct("-X", "-j", job_id)):
            return
        time.sleep(0.5)
    raise AssertionError(f"Slurm job {job_id} never ran: {sacct('-X', '-j', job_id.split('_')[0])}")


def array_id(out: str) -> str:
    line = next(ln for ln in out.splitlines() if ln.startswith("slurm: submitted"))
    return line.split(" as ")[1].split()[0]


def test_sweep_rows_and_resume(tmp_path):
    """Two cases as two array tasks on one core each; rows, COMPLETED in sacct; a rerun submits nothing."""
    p = sweep("attention=sdpa,elfatt", "resolution=64", "repeats=3", sweep_dir=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    df = rows(tmp_path)
    assert sorted(df["attention"]) == ["elfatt", "sdpa"] and (df["status"] == "ok").all(), df[["status", "reason"]]
    ids = submitted_ids(tmp_path)
    array = array_id(p.stdout)
    assert ids == [f"{array}_0", f"{array}_1"]
    assert {r["JobID"]: r["State"] for r in sacct("-X", "-j", array)} == {i: "COMPLETED" for i in ids}
    facts = [json.loads(f.read_text())["slurm"] for f in tmp_path.rglob("slurm_job.json")]
    assert sorted(f["slurm_id"] for f in facts) == ids
    assert all(f["cpus"] == 1 and f["cpu_affinity"] == 1 and f["binding"] == "ok" for f in facts), facts

    again = sweep("attention=sdpa,elfatt", "resolution=64", "repeats=3", "resume=true", sweep_dir=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "slurm: submitted" not in again.stdout and "resume: 2 of 2 jobs" in again.stdout, again.stdout
    assert submitted_ids(tmp_path) == ids  # no new job
    assert len(rows(tmp_path)) == 2


def test_cancelled_job_becomes_a_row(tmp_path):
    """scancel one running task: the sweep ends with its merged table, a `cancelled` row and no traceback."""
    # job #1 (512 px, 100k calls: minutes) is cancelled while it runs; job #0 (64 px) finishes
    p = sweep("attention=sdpa", "resolution=64,512", "repeats=100000", sweep_dir=tmp_path, wait=False)
    try:
        array = wait_submitted(tmp_path, 2)[0].split("_")[0]
        wait_running(f"{array}_1")
        time.sleep(3)  # inside the measurement
        subprocess.run(["scancel", f"{array}_1"], check=True, timeout=30)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    assert "merged table:" in out
    df = rows(tmp_path).set_index("resolution")
    assert df.loc[64, "status"] == "ok"
    assert df.loc[512, "status"] == "cancelled" and "CANCELLED" in df.loc[512, "reason"], df.loc[512, "reason"]
    assert f"Slurm job {array}_1" in df.loc[512, "reason"]
    said = [ln for ln in out.splitlines() if ": cancelled" in ln]
    assert len(said) == 1 and said[0].startswith("#1 ") and ": cancelled (Slurm job" in said[0], out  # one line
    assert {r["JobID"]: r["State"].split()[0] for r in sacct("-X", "-j", array)} == {
        f"{array}_0": "COMPLETED", f"{array}_1": "CANCELLED"}
    lock.release(lock.acquire(tmp_path)[0])  # the lock file may stay (flock); nobody still holds it


def test_preempted_job_is_requeued_and_finishes(tmp_path):
    """A job of the higher-priority partition preempts the sweep's job; Slurm requeues it and it finishes."""
    p = sweep("attention=sdpa", "resolution=256", "repeats=20000", sweep_dir=tmp_path, wait=False)  # ~10 s
    urgent = None
    try:
        job = wait_submitted(tmp_path, 1)[0]  # one case: a plain job, no array
        wait_running(job)
        time.sleep(2)
        urgent = subprocess.run(["sbatch", "--parsable", "-p", "urgent", "-c", str(os.cpu_count()), "--mem=100M",
                                 "-t", "1", "-o", "/dev/null", "--wrap", "sleep 2"],
                                capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        out, err = p.communicate(timeout=200)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "was requeued" in out, out
    df = rows(tmp_path)
    assert df["status"].tolist() == ["ok"], df[["status", "reason"]]
    history = [r["State"].split()[0] for r in sacct("-D", "-X", "-j", job.split("_")[0])]
    assert "PREEMPTED" in history or "REQUEUED" in history, history
    assert history[-1] == "COMPLETED", history
    assert sacct("-X", "-j", urgent)[0]["State"] == "COMPLETED"


def test_timed_out_job_becomes_a_row(tmp_path):
    """Slurm's time limit ends a slow case: in the job the warning signal only printed a line (nothing raised
    in the measurement, no requeue); the sweep writes a `timeout` row and ends with its table."""
    # The limit is cut to 1 s once the case runs (a 1-minute limit would cost 60-90 s: slurmctld looks
    # at time limits every 30 s); the warning signal is then due at once as well.
    p = sweep("attention=sdpa", "resolution=512", "repeats=100000", sweep_dir=tmp_path, wait=False)
    try:
        job = wait_submitted(tmp_path, 1)[0]
        wait_running(job)
        time.sleep(3)
        subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=0:01"], check=True, timeout=30)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "merged table:" in out, err[-3000:]
    df = rows(tmp_path)
    assert df["status"].tolist() == ["timeout"] and "TIMEOUT" in df["reason"][0], df["reason"][0]
    log = "".join((tmp_path / ".submitit" / job / f"{job}_0_log.{kind}").read_text() for kind in ("out", "err"))
    assert "SIGUSR2" in log and "SIGTERM" in log and "Traceback" not in log and "requeue" not in log.lower(), log
    assert sacct("-X", "-j", job)[0]["State"] == "TIMEOUT"


def _node_gpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%G"], capture_output=True, text=True, timeout=15).stdout
    return sum(int(g.split(":")[-1].split("(")[0]) for g in out.split() if g.startswith("gpu"))


def test_slurm_gpus_on_a_cpu_node(tmp_path):
    """slurm_gpus asks for one GPU: one line naming the setting and exit 2 (or, with fake GPUs, it runs)."""
    args = ["attention=sdpa", "resolution=64", "repeats=3", "hydra/launcher=slurm_gpus", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1"]
    p = sweep(*args, sweep_dir=tmp_path)
    if _node_gpus():
        assert p.returncode == 0, p.stderr[-3000:]
        facts = json.loads(next(tmp_path.rglob("slurm_job.json")).read_text())["slurm"]
        # Slurm 22.05 sets only SLURM_GPUS_ON_NODE for fake (plain-file) GPUs, no CUDA_VISIBLE_DEVICES
        assert facts["gpus"] == 1, facts
        return
    assert p.returncode == 2, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: Slurm refused"), p.stderr
    assert "gres" in err[0].lower() and "hydra.launcher.gpus_per_node=1" in err[0], err[0]


@pytest.mark.parametrize("setting", ["partition=nope", "account=nope", "qos=nope"])
def test_sbatch_refusal_names_the_setting(tmp_path, setting):
    p = sweep("attention=sdpa", "resolution=64", "repeats=3", f"hydra.launcher.{setting}", sweep_dir=tmp_path)
    assert p.returncode == 2, p.stderr[-3000:]
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and f"hydra.launcher.{setting}" in err[0], p.stderr
    lock.release(lock.acquire(tmp_path)[0])  # the lock file may stay (flock); nobody still holds it
