"""Numbers you can trust: measuring conditions and verdicts, rows never lost or
overwritten, accuracy that never costs a measurement, bad input as one line."""
import errno
import io
import math
import os
import signal
import subprocess
import sys
import time
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
import torch

from suite import cli
from suite import records as R
from suite.sweep import lock
from suite.conditions import Limits, verdict
from suite.measure import Timing
from suite.workloads.single import SingleAttention

ROOT = Path(__file__).resolve().parents[2]
TINY = ["device=cpu", "precision=fp32", "workload.dim=32", "workload.heads=2", "warmup=1", "repeats=5", "min_time_s=0.01",
        "accuracy_max_tokens=64", "retries=0", "load_window_s=0"]


def run_py(*args, timeout=240, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def rows_under(path: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(f) for f in sorted(path.rglob("records.parquet"))], ignore_index=True)


# -- conditions and verdicts ---------------------------------------------------------
def timing(p10=1.0, p50=1.0, p90=1.0):
    return Timing(p10, p50, p90, 10, 1.0, 1.0)


def test_verdict_rules_in_order():
    cpu = torch.device("cpu")
    quiet = dict(threads=2, cpu_affinity=2, other_cpu_load=0.1, load_avg_before=0.5)
    assert verdict(timing(), quiet, cpu) == ("ok", [])
    q, why = verdict(timing(0.5, 1.0, 1.5), quiet, cpu)
    assert q == "noisy" and "spread 100% of p50 > 20%" in why[0]
    q, why = verdict(timing(0.5, 1.0, 1.5), dict(quiet, other_cpu_load=1.7), cpu)
    assert q == "contended" and "other processes used 1.7 CPU cores" in why[0] and len(why) == 2
    q, why = verdict(timing(), dict(quiet, threads=8), cpu)
    assert q == "contended" and "threads=8 exceeds the 2 CPUs" in why[0]
    gpu = dict(quiet, gpu_sm_clock_mhz_start=1980, gpu_sm_clock_mhz_min=1400, gpu_throttle_reasons="sw_power_cap")
    q, why = verdict(timing(), gpu, torch.device("cuda"))
    assert q == "throttled" and any("sw_power_cap" in w for w in why) and any("1980 to 1400" in w for w in why)
    assert verdict(timing(0.9, 1.0, 1.1), quiet, cpu, Limits(noise_pct=10))[0] == "noisy"


def test_every_row_records_its_conditions(run_job, tmp_path):
    (row,) = run_job(["attention=vanilla", "resolution=64", "threads=1", *TINY], tmp_path)
    assert row.status == "ok" and row.threads == 1 and row.cpu_affinity >= 1
    assert row.timed_wall_s > 0 and row.timed_cpu_s > 0 and math.isfinite(row.load_avg_before)
    assert row.timing_quality in ("ok", "noisy", "contended") and row.timing_attempts == 1
    assert row.timing == "eager"
    assert torch.get_num_threads() == 1


def test_a_case_under_contention_is_flagged(run_job, tmp_path):
    """Two busy processes compete for the cores while a case is timed: the row says so."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(1.0)
        (row,) = run_job(["attention=vanilla", "resolution=128", "min_time_s=1.0", "repeats=0", "load_window_s=1",
                          *[t for t in TINY if not t.startswith(("min_time_s", "repeats", "load_window_s"))]], tmp_path)
    finally:
        for h in hogs:
            h.kill()
    assert row.status == "ok"
    assert row.timing_quality == "contended", (row.timing_quality, row.timing_note, row.other_cpu_load)
    assert "other processes used" in row.timing_note and row.other_cpu_load >= 0.5


def test_flagged_timing_is_retried_and_the_cleanest_kept(run_job, tmp_path, monkeypatch):
    from suite import conditions

    verdicts = iter([("noisy", ["spread"]), ("ok", [])])
    monkeypatch.setattr(conditions, "verdict", lambda *a, **k: next(verdicts))
    (row,) = run_job(["attention=vanilla", "resolution=64", *[t for t in TINY if t != "retries=0"], "retries=3"],
                     tmp_path)
    assert row.timing_quality == "ok" and row.timing_attempts == 2
    assert "kept attempt 2 of 2 (others: #1 noisy)" in row.timing_note


def test_cuda_graph_timing_is_unsupported_on_cpu(run_job, tmp_path):
    (row,) = run_job(["attention=vanilla", "resolution=64", "timing=cuda_graph", *TINY], tmp_path)
    assert row.status == "unsupported" and "timing=cuda_graph needs a CUDA device" in row.reason


# -- rows never lost or overwritten ----------------------------------------------------
def test_writing_appends_and_a_broken_view_loses_nothing(tmp_path):
    from test_report import row

    R.write_records([row("elfatt", latency=1.0)], tmp_path)
    R.write_records([row("elfatt", latency=2.0)], tmp_path)  # a rerun of the same case: both rows stay
    assert pd.read_parquet(tmp_path / "records.parquet")["latency_ms_p50"].tolist() == [1.0, 2.0]
    (tmp_path / "records.parquet").write_bytes(b"PAR1 truncated")  # the view: the parts are the truth
    R.write_records([row("elfatt", latency=3.0)], tmp_path)
    assert pd.read_parquet(tmp_path / "records.parquet")["latency_ms_p50"].tolist() == [1.0, 2.0, 3.0]
    assert sorted(R.read_folder(tmp_path)["latency_ms_p50"]) == [1.0, 2.0, 3.0]
    assert not list(tmp_path.glob("*.unreadable*")) and not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_extending_a_sweep_keeps_every_row(tmp_path):
    base = ["-m", *TINY, "attention=elfatt", "resolution=64", f"hydra.sweep.dir={tmp_path}",
            "hydra.callbacks.sweep.report=false"]
    assert run_py(*base, "attention.block_rows=2,4").returncode == 0
    first = rows_under(tmp_path)
    p = run_py(*base, "attention.block_rows=1,2,4", "resume=true")
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("[resume] ok row for this case already in") == 2
    after = rows_under(tmp_path)
    assert len(after) == 3 and set(first["timestamp"]) <= set(after["timestamp"])
    assert sorted(after["variant"]) == ["elfatt[block_rows=1]", "elfatt[block_rows=2]", "elfatt[block_rows=4]"]


@pytest.mark.slow
def test_a_second_sweep_on_the_same_folder_refuses(tmp_path):
    tiny = [t for t in TINY if not t.startswith(("repeats", "min_time_s"))]
    slow = ["-m", *tiny, "attention=vanilla", "resolution=64", "repeats=40000",  # ~10 s of timed calls
            f"hydra.sweep.dir={tmp_path}", "hydra.callbacks.sweep.report=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *slow], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if (tmp_path / ".sweep.lock").exists():
                break
            time.sleep(0.2)
        second = run_py(*slow)
        assert second.returncode == 2
        assert second.stderr.strip().startswith("error: another sweep (pid") and len(second.stderr.splitlines()) == 1
    finally:
        first.communicate(timeout=240)
    assert first.returncode == 0
    lock.release(lock.acquire(tmp_path)[0])  # given back when the first sweep ended
    assert len(rows_under(tmp_path)) == 1  # the first sweep's row; the second measured nothing


def test_collect_names_an_unreadable_part_and_keeps_the_rest(tmp_path, capsys):
    from suite import collect as C
    from test_report import row

    R.write_records([row("elfatt", latency=2.0)], tmp_path / "a")
    R.write_records([row(latency=10.0)], tmp_path / "b")
    bad = tmp_path / "a" / "rows" / "zz-truncated.parquet"
    bad.write_bytes(b"truncated")
    C.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert f"could not read: {bad}" in out
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 2


def test_report_answers_a_bad_table_with_one_line(tmp_path):
    bad = tmp_path / "results.parquet"
    bad.write_bytes(b"not a table")
    p = subprocess.run([sys.executable, "-m", "suite.report", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.strip().splitlines()) == 1


def test_an_unwritable_folder_stops_before_measuring(run_job, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("a file, not a folder")
    measured = []
    monkeypatch.setattr(SingleAttention, "build", lambda *a: measured.append(1))
    with pytest.raises(R.RowsNotWritten, match="is not writable"):
        run_job(["attention=vanilla", "resolution=64", *TINY], tmp_path / "file" / "sub")
    assert measured == []


def test_a_full_disk_stops_the_sweep_with_one_line_and_keeps_finished_rows(tmp_path, monkeypatch):
    """In-process multirun; the second job's write fails with ENOSPC."""
    from hydra.core.global_hydra import GlobalHydra
    from test_sweep import run_in_process

    from suite import storage

    real, calls = storage.atomic_write, []

    def full_after_first_job(write, path):
        calls.append(path)
        if len(calls) > 3:  # job 1's part and its two views went through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(write, path)

    monkeypatch.setattr(storage, "atomic_write", full_after_first_job)
    from suite.sweep import callbacks

    at_exit = []  # the callback's exit hook, run here rather than when pytest ends
    monkeypatch.setattr(callbacks, "atexit", types.SimpleNamespace(register=at_exit.append, unregister=at_exit.remove))
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", *TINY, "attention=vanilla", "resolution=32,64,96",
                                      f"hydra.sweep.dir={tmp_path}", "hydra.callbacks.sweep.report=false"])
    err = io.StringIO()
    GlobalHydra.instance().clear()
    with redirect_stderr(err), pytest.raises(SystemExit) as stop:
        run_in_process()
    GlobalHydra.instance().clear()
    assert stop.value.code == 1
    line = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
    assert len(line) == 1 and "No space left on device" in line[0] and "stopping" in line[0]
    assert len(rows_under(tmp_path)) == 1  # the finished row is kept; the sweep did not go on
    assert len(at_exit) == 1
    with pytest.raises(lock.SweepLocked):  # the folder stays locked until the process ends
        lock.acquire(tmp_path)
    out = io.StringIO()
    with redirect_stdout(out):
        at_exit[0]()
    assert "stopped early" in out.getvalue()
    lock.release(lock.acquire(tmp_path)[0])


# -- accuracy and FLOP counting never cost a measurement -----------------------------
def test_accuracy_past_memory_is_skipped_with_a_note(run_job, tmp_path, monkeypatch):
    from suite.workloads import single

    monkeypatch.setattr(single, "available_bytes", lambda device: (1024, "test"))
    (row,) = run_job(["attention=vanilla", "resolution=64", *TINY], tmp_path)
    assert row.status == "ok" and math.isnan(row.rel_err_vs_fp64) and math.isfinite(row.rel_err_vs_exact)
    assert "rel_err_vs_fp64 skipped: the float64 copy needs at least" in row.reason


def test_a_failing_accuracy_step_or_flop_count_leaves_the_row_ok(run_job, tmp_path, monkeypatch):
    from suite import job as job_module
    from suite import accuracy

    def oom(*a, **k):
        raise torch.OutOfMemoryError("simulated: the float64 reference does not fit")

    monkeypatch.setattr(accuracy, "accuracy", oom)
    monkeypatch.setattr(job_module, "try_count_flops", lambda fn: (math.nan, "flops_counted unavailable: simulated"))
    (row,) = run_job(["attention=vanilla", "resolution=64", *TINY], tmp_path)
    assert row.status == "ok" and row.latency_ms_p50 > 0
    assert "accuracy not measured: OutOfMemoryError: simulated" in row.reason and "flops_counted unavailable" in row.reason


def test_the_exact_reference_holds_a_bounded_amount_of_scores():
    from suite import accuracy as acc

    q, k, v = (torch.randn(1, 2, 300, 4, dtype=torch.float64) for _ in range(3))
    whole = acc.exact_attention_fp64(q, k, v, chunk=300)
    old = acc.REFERENCE_BUDGET
    try:
        acc.REFERENCE_BUDGET = 2 * 300 * 8 * 2 * 7  # 7 query rows at a time
        torch.testing.assert_close(acc.exact_attention_fp64(q, k, v), whole)
    finally:
        acc.REFERENCE_BUDGET = old


# -- bad input: one line, exit 2 ---------------------------------------------------------
BAD = [
    ("attention=nope", "attention=nope is not valid; valid choices: agent, cswin"),
    ("precision=fp8", "precision=fp8 is not valid; valid choices: amp, auto, bf16, fp16, fp32"),
    ("workload=nope", "workload=nope is not valid; valid choices: diffusion, layer, model, op, train_proxy"),
    ("resolution=abc", "resolution='abc' is not valid; valid: a positive number of pixels (square) or HxW"),
    ("batch_size=1e9", "batch_size=1e9 is not valid; valid: an integer"),
    ("seed=abc", "seed=abc is not valid; valid: an integer"),
    ("resolutoin=512", "unknown setting 'resolutoin' (did you mean resolution?)"),
    ("+resolutoin=512", "unknown setting 'resolutoin' (did you mean resolution?)"),
    ("model.depthz=3", "unknown setting 'model.depthz' (did you mean model.depths?)"),
    ("workload.dimm=3", "unknown setting 'workload.dimm' (did you mean workload.dim?)"),
    ("warmup=-1", "warmup=-1 is not valid; valid: a number >= 0"),
    ("repeats=-5", "repeats=-5 is not valid; valid: a number >= 0"),
    ("min_time_s=-1", "min_time_s=-1.0 is not valid; valid: a number >= 0"),
    ("memory_limit_mib=-5", "memory_limit_mib=-5.0 is not valid; valid: a number >= 0"),
    ("flush_l2=maybe", "flush_l2=maybe is not valid; valid: true or false"),
    ("attention.qkv_bias=maybe", "attention.qkv_bias='maybe' is not valid for 'elfatt'; valid: true or false"),
    ("attention.block_rows=abc", "attention.block_rows='abc' is not valid for 'elfatt'; valid: an integer or null"),
    ("attention.block_rows=5", "block_rows=5 does not divide the grid height H=14; valid block_rows: [1, 2, 7, 14]"),
    ("resolution=-224", "resolution='-224' is not valid; valid: a positive number of pixels (square) or HxW"),
    ("resolution=250", "resolution=250 is not divisible by patch_size=16; valid sizes are multiples of 16"),
    ("workload.heads=5", "heads=5 does not divide dim=768; valid heads for dim=768"),
    ("timing=fast", "timing='fast' is not valid; valid choices: eager, cuda_graph, kernels"),
    ("task=train_proxy", "task=train_proxy was removed; write workload=train_proxy"),
    ("variant=sdpa_flash", "variant= was removed: a preset is an attention option now, e.g. attention=sdpa_flash"),
]


@pytest.mark.parametrize("arg,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(arg, message):
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as stop:
        cli.preflight([arg])
    assert stop.value.code == 2
    assert err.getvalue().startswith(f"error: {message}") and len(err.getvalue().strip().splitlines()) == 1


def test_a_sweep_value_bad_for_every_job_fails_first_and_one_bad_for_some_becomes_rows():
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit):
        cli.preflight(["-m", "attention=vanilla,elfatt", "warmup=-1"])
    assert "warmup=-1 is not valid" in err.getvalue()
    cli.preflight(["-m", "resolution=250,240"])  # 250 is bad, 240 fine: the sweep runs, 250 becomes a row
    with redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        cli.preflight(["-m", "precision=fp16,fp8"])  # Hydra could not compose fp8 at all: no job could run it


@pytest.mark.slow
@pytest.mark.parametrize("args,code", [(["attention=nope"], 2), (["+resolutoin=512"], 2)])
def test_run_py_exit_codes(args, code, tmp_path):
    p = run_py(*args, f"hydra.run.dir={tmp_path}")
    assert p.returncode == code and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,says", [(signal.SIGINT, 130, "interrupted by the user (Ctrl-C)"),
                                           (signal.SIGTERM, 143, "terminated by SIGTERM (signal 15)")])
def test_a_signal_is_one_line_and_marks_the_case(tmp_path, sig, code, says):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tiny = [t for t in TINY if not t.startswith(("repeats", "min_time_s"))]
    p = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *tiny, "attention=vanilla", "resolution=256",
                          "repeats=1000000", f"hydra.run.dir={tmp_path}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(8)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    assert err.strip().startswith(f"{says}: this case is marked 'interrupted' in {tmp_path}"), err
    assert len(err.strip().splitlines()) == 1
    rows = pd.read_csv(tmp_path / "records.csv")
    assert rows["status"].tolist() == ["interrupted"] and rows["reason"].tolist() == [says]
    assert not list(tmp_path.rglob("*.tmp"))


def test_min_time_is_met_and_load_never_exceeds_the_machine(run_job, tmp_path):
    """A 64 px case with min_time_s=0.5 times at least 0.4 s of loop (repeats from a steady-state
    estimate, not from the slow first call), and the other-process load is at most the CPUs there are."""
    (row,) = run_job(["attention=sdpa", "resolution=64", "min_time_s=0.5", "repeats=0", "load_window_s=1",
                      *[t for t in TINY if not t.startswith(("min_time_s", "repeats", "load_window_s"))]], tmp_path)
    assert row.status == "ok" and row.timed_wall_s >= 0.4, (row.timed_wall_s, row.repeats)
    assert 0 <= row.other_cpu_load <= os.cpu_count()


def test_a_short_window_is_waited_out_and_an_unmeasured_load_is_said(run_job, tmp_path):
    from suite import conditions

    t0 = time.perf_counter()
    _, cols = conditions.observe(lambda: timing(), torch.device("cpu"), types.SimpleNamespace(handle=None), 0.3)
    assert time.perf_counter() - t0 >= 0.3 and 0 <= cols["other_cpu_load"] <= os.cpu_count()
    q, why = verdict(timing(), dict(threads=1, cpu_affinity=2), torch.device("cpu"), Limits(load_window_s=0))
    assert q == "ok" and why == ["other processes' CPU load not measured (load_window_s=0)"]


def test_spread_notes_never_say_a_limit_exceeds_itself():
    from suite.conditions import above

    assert above(20.4, 20) == "20.4" and above(21, 20) == "21" and above(20.04, 20) == "20.04"
    q, why = verdict(timing(0.9, 1.0, 1.102), dict(threads=1, cpu_affinity=2, other_cpu_load=0.0),
                     torch.device("cpu"))
    assert q == "noisy" and "spread 20.2% of p50 > 20%" in why[0]
