"""No row once written is lost or overwritten, whoever writes at the same time
(suite/storage.py): parallel writers, a reader racing them, legacy twins, locks."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from suite import storage
from suite.sweep import lock

ROOT = Path(__file__).resolve().parents[2]


def _rows(tag: str, n: int = 1) -> pd.DataFrame:
    return pd.DataFrame({"row_id": [f"{tag}-{i}" for i in range(n)], "status": ["ok"] * n,
                         "timestamp": [tag] * n, "latency_ms_p50": [1.0] * n})


def _writer(folder: str, tag: str, count: int) -> None:
    for i in range(count):
        storage.write_rows(_rows(f"{tag}-{i}"), folder)


def test_parallel_writers_lose_no_row(tmp_path):
    """4 processes x 25 writes into one folder, a reader racing them: 100 rows, each once."""
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), f"p{k}", 25)) for k in range(4)]
    for p in procs:
        p.start()
    problems, seen = [], 0
    while any(p.is_alive() for p in procs):  # the reader never sets anything aside, never fails
        seen = max(seen, len(storage.read_folder(tmp_path, problems)))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    df = storage.read_folder(tmp_path, problems)
    assert problems == []
    assert len(df) == 100 and df["row_id"].is_unique
    view = pd.read_parquet(tmp_path / "records.parquet")  # the last rebuild saw every part
    assert sorted(view["row_id"]) == sorted(df["row_id"])
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.glob("*.unreadable*"))


def test_a_short_or_truncated_twin_loses_nothing(tmp_path):
    """A folder from before parts: a readable but shorter parquet beside a longer CSV, then a write."""
    long = pd.concat([_rows("a", 3), _rows("b", 2)], ignore_index=True)
    long.to_csv(tmp_path / "records.csv", index=False)
    long.iloc[:2].to_parquet(tmp_path / "records.parquet", index=False)
    assert len(storage.read_folder(tmp_path)) == 5  # the union of both twins
    storage.write_rows(_rows("c"), tmp_path)
    after = storage.read_folder(tmp_path)
    assert sorted(after["row_id"]) == sorted([*long["row_id"], "c-0"])
    # a truncated parquet (0 bytes) beside a good CSV: the CSV's rows, and the broken file named
    other = tmp_path / "other"
    other.mkdir()
    long.to_csv(other / "records.csv", index=False)
    (other / "records.parquet").write_bytes(b"")
    problems: list[str] = []
    assert len(storage.read_folder(other, problems)) == 5
    assert problems and "records.parquet" in problems[0]
    assert (other / "records.parquet").exists()  # named, never moved aside


def test_an_unreadable_part_is_named_and_kept(tmp_path):
    storage.write_rows(_rows("a"), tmp_path)
    bad = tmp_path / storage.ROWS / "zz-bad.parquet"
    bad.write_bytes(b"not parquet")
    problems: list[str] = []
    assert len(storage.read_tree(tmp_path, problems)) == 1
    assert bad.exists() and str(bad) in problems[0]


def test_a_fifo_is_never_read(tmp_path):
    fifo = tmp_path / "records.csv"
    os.mkfifo(fifo)
    problems: list[str] = []
    assert storage.read_folder(tmp_path, problems).empty  # would block forever if opened
    assert "not a regular file" in problems[0]


def test_the_sweep_lock_has_one_holder_and_dies_with_its_process(tmp_path):
    held, note = lock.acquire(tmp_path)
    assert note == ""
    with pytest.raises(lock.SweepLocked, match=f"pid {os.getpid()}"):
        lock.acquire(tmp_path)  # a second flock on a new descriptor is refused, even in-process
    lock.release(held)
    lock.release(lock.acquire(tmp_path)[0])
    # a holder killed with SIGKILL leaves no lock behind: nothing to take over
    code = "import sys, time; from pathlib import Path; from suite.sweep import lock; " \
           "lock.acquire(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    with pytest.raises(lock.SweepLocked):
        lock.acquire(tmp_path)
    p.kill()
    p.wait()
    lock.release(lock.acquire(tmp_path)[0])


def _take(folder: str, q, start, tried) -> None:
    start.wait()  # every taker ready: they try at the same moment
    try:
        held, _ = lock.acquire(Path(folder))
        q.put("held")
    except lock.SweepLocked:
        held = None
        q.put("refused")
    tried.wait()  # nobody lets go before everyone has tried
    lock.release(held)


def test_simultaneous_takers_never_both_hold(tmp_path):
    ctx = mp.get_context("spawn")
    for _ in range(3):
        q, start, tried = ctx.Queue(), ctx.Barrier(4), ctx.Barrier(4)
        procs = [ctx.Process(target=_take, args=(str(tmp_path), q, start, tried)) for _ in range(4)]
        for p in procs:
            p.start()
        got = sorted(q.get(timeout=60) for _ in procs)
        for p in procs:
            p.join()
        assert got.count("held") == 1, got


TINY = ["attention=sdpa", "resolution=64", "workload.dim=32", "workload.heads=2", "warmup=0", "repeats=1", "accuracy=false",
        "flops_count=false", "retries=0", "device=cpu", "precision=fp32", "load_window_s=0"]


@pytest.mark.slow
def test_single_runs_started_together_each_keep_their_row(tmp_path):
    """Six identical runs started in the same second, default folders: six folders, six rows."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [o[1][-500:] for o in outs]
    folders = storage.job_folders(tmp_path / "results" / "runs")
    assert len(folders) == 6
    assert len(storage.read_tree(tmp_path / "results" / "runs")) == 6


@pytest.mark.slow
def test_sigterm_in_a_sweep_marks_the_case_frees_the_lock_and_leaves_no_temp_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = [t for t in TINY if not t.startswith("repeats")] + ["repeats=1000000", "attention=vanilla",
                                                                 "resolution=256"]
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *slow, "seed=0,1",
                          f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):  # until the first job is measuring
        if list(tmp_path.rglob("job_status.*.json")):
            break
        time.sleep(0.1)
    time.sleep(4)
    p.send_signal(15)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated by SIGTERM (signal 15)" in err
    df = storage.read_tree(tmp_path)
    assert df["status"].tolist() == ["interrupted"] and "SIGTERM" in df["reason"].iloc[0]
    lock.release(lock.acquire(tmp_path)[0])  # free
    assert not list(tmp_path.rglob("*.tmp"))


def run_sweep(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *TINY, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_sweep_over_seed_and_threads_keeps_four_rows(tmp_path):
    p = run_sweep("seed=0,1", "threads=1,2", f"hydra.sweep.dir={tmp_path}", "hydra.callbacks.sweep.report=false",
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    merged = pd.read_parquet(tmp_path / "results.parquet")
    assert len(merged) == 4 and sorted(zip(merged["seed"], merged["threads"])) == [(0, 1), (0, 2), (1, 1), (1, 2)]


@pytest.mark.slow
def test_two_sweeps_sharing_records_dir_keep_every_row_resume_and_merge_from_it(tmp_path):
    shared = tmp_path / "shared"
    a = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", *TINY, "seed=0,1,2",
                          f"records_dir={shared}", f"hydra.sweep.dir={tmp_path / 'a'}",
                          "hydra.callbacks.sweep.report=false"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = run_sweep("seed=3,4,5", f"records_dir={shared}", f"hydra.sweep.dir={tmp_path / 'b'}",
                  "hydra.callbacks.sweep.report=false", cwd=tmp_path)
    a.communicate(timeout=600)
    assert a.returncode == 0 and b.returncode == 0, b.stderr[-2000:]
    assert sorted(storage.read_tree(shared)["seed"]) == [0, 1, 2, 3, 4, 5]  # both sweeps, every row
    again = run_sweep("seed=0,1,2", f"records_dir={shared}", "resume=true", f"hydra.sweep.dir={tmp_path / 'a'}",
                      "hydra.callbacks.sweep.report=false", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("[resume] ok row for this case already in") == 3
    assert len(storage.read_tree(shared)) == 6  # nothing measured again
    assert len(pd.read_parquet(tmp_path / "a" / "results.parquet")) == 6  # the merge read where the rows are


def test_every_identity_setting_separates_cases_and_no_other_does(run_job, tmp_path):
    """Each setting marked as part of the case changes the case key; the others (how long, how often,
    where) leave it as it is."""
    from suite.records import case_key

    base = ["attention=vanilla", "workload=op", "resolution=32", "workload.dim=32", "workload.heads=2",
            "warmup=0", "repeats=1", "accuracy=false", "flops_count=false", "retries=0", "device=cpu",
            "precision=fp32", "threads=1"]
    key = case_key(run_job(base, tmp_path / "base")[0])
    changes = {"attention=sdpa": True, "attention.lepe=true": True, "workload=layer": True, "resolution=64": True,
               "resolution=32x64": True, "batch_size=2": True, "workload.dim=64": True, "workload.heads=4": True,
               "workload.patch_size=8": True, "precision=bf16": True, "direction=bwd": True, "threads=2": True,
               "seed=1": True, "flush_l2=false": True,
               "warmup=2": False, "repeats=3": False, "min_time_s=0.2": False, "retries=1": False,
               "noise_pct=50": False, "contention_cores=1": False, "accuracy_max_tokens=1": False,
               "memory_limit_mib=10000": False, "skip_unfit=false": False}
    for i, (change, separates) in enumerate(changes.items()):
        name = change.split("=")[0]
        row = run_job([o for o in base if o.split("=")[0] != name] + [change], tmp_path / str(i))[0]
        assert (case_key(row) != key) == separates, change
