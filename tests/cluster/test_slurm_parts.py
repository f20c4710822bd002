"""The Slurm launcher's parts that need no cluster (run everywhere, milliseconds to seconds):
slurm_facts() from an environment, sbatch's refusals as one line, Slurm states
as rows, and plan_jobs() on a sweep folder with rows in it."""
from __future__ import annotations

import pytest

from suite.sweep.slurm_env import slurm_facts

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def test_slurm_facts_of_an_array_task():
    env = {"SLURM_JOB_ID": "42", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2",
           "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_CPUS_PER_TASK": "8", "SLURM_JOB_CPUS_PER_NODE": "16(x2)",
           "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_PARTITION": "gpu"}
    f = slurm_facts(env, cpu_affinity=8)
    assert (f["in_slurm"], f["slurm_id"], f["nodelist"], f["cpus"], f["gpus"]) == (True, "40_2", "gpu[01-02]", 8, 1)
    assert f["binding"] == "ok" and not f["binding_note"]


def test_slurm_facts_flag_a_loose_binding():
    f = slurm_facts({"SLURM_JOB_ID": "7", "SLURM_JOB_CPUS_PER_NODE": "2(x3),1", "SLURM_JOB_GPUS": "0,2"},
                    cpu_affinity=64)
    assert (f["slurm_id"], f["cpus"], f["gpus"], f["binding"]) == ("7", 2, 2, "loose")
    assert "allows 64 CPUs but Slurm allocated 2" in f["binding_note"]


def test_slurm_facts_outside_slurm():
    f = slurm_facts({}, cpu_affinity=4)
    assert (f["in_slurm"], f["slurm_id"], f["cpus"], f["binding"]) == (False, "", 0, "")


@pytest.mark.parametrize("message, setting", [
    ("sbatch: error: Invalid generic resource (gres) specification", "gpus_per_node=1"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     "account=acme"),
    ("sbatch: error: invalid partition specified: nope", "partition=nope"),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "qos=None"),
    ("sbatch: error: Batch job submission failed: Invalid feature specification", "constraint=h100"),
])
def test_sbatch_refusal_is_one_line_naming_the_setting(message, setting):
    from suite.sweep.slurm_jobs import sbatch_line

    params = {"gpus_per_node": 1, "account": "acme", "partition": "nope", "qos": None, "constraint": "h100"}
    line = sbatch_line(message, params)
    assert "\n" not in line and f"hydra.launcher.{setting}" in line and "sbatch: error" not in line


def test_slurm_states_become_statuses():
    from suite.records import STATUSES
    from suite.sweep.slurm_jobs import STATE_STATUS, describe_state, state_word

    assert set(STATE_STATUS.values()) <= set(STATUSES)
    assert STATE_STATUS[state_word("CANCELLED by 0")] == "cancelled"
    text = describe_state("7_1", {"State": "TIMEOUT", "Reason": "None", "Elapsed": "00:05:00", "NodeList": "n1",
                                  "ExitCode": "0:15"})
    assert text == "Slurm job 7_1 TIMEOUT, after 00:05:00, on n1 (exit 0:15)"


def test_plan_jobs_skips_cases_with_an_ok_row(tmp_path, run_job):
    from suite.sweep.launcher import plan_jobs

    tiny = ["workload=op", "resolution=64", "workload.dim=32", "workload.heads=2", "warmup=0", "repeats=3", "min_time_s=0",
            "accuracy=false", "flops_count=false", "device=cpu", "precision=fp32"]
    done = [*tiny, "attention=sdpa"]
    assert run_job(done, tmp_path / "a")[0].status == "ok"
    jobs = [[*done, "resume=true"], [*tiny, "attention=elfatt", "resume=true"], [*done, "resume=false"],
            [*tiny, "attention=no_such_attention", "resume=true"]]
    to_submit, skipped = plan_jobs(jobs, tmp_path)
    assert to_submit == [1, 2, 3] and list(skipped) == [0]
    assert str(tmp_path / "a") in skipped[0]


def test_a_preempted_job_that_slurm_requeued_is_not_over(monkeypatch):
    """sacct says PREEMPTED until the requeued job runs again; scontrol's PENDING wins (the sweep waits)."""
    import subprocess

    from suite.sweep import slurm_jobs

    said = {"sacct": "9_0|PREEMPTED|None|0:0|n1|00:00:05\n9_[1-2%2]|PENDING|None|0:0|None assigned|00:00:00\n",
            "scontrol": "JobId=10 ArrayJobId=9 ArrayTaskId=0 JobState=PENDING Reason=BeginTime Restarts=1 "
                        "ExitCode=0:0 NodeList=(null) RunTime=00:00:00\n"}
    monkeypatch.setattr(slurm_jobs.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 0, stdout=said[cmd[0]], stderr=""))
    states = slurm_jobs.slurm_states(["9_0", "9_1", "9_2"])
    assert {j: s["State"] for j, s in states.items()} == {"9_0": "PENDING", "9_1": "PENDING", "9_2": "PENDING"}
    assert states["9_0"]["Restarts"] == "1"


def test_a_job_inside_slurm_keeps_its_row(tmp_path, run_job, monkeypatch):
    """The environment and the timing both report Slurm's CPUs: one row, ok, with the Slurm
    columns (a clash once turned every job on a cluster into an error row)."""
    for key, value in {"SLURM_JOB_ID": "42", "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "2",
                       "SLURM_JOB_NODELIST": "vm", "SLURM_CPUS_PER_TASK": "1", "SLURM_JOB_PARTITION": "debug"}.items():
        monkeypatch.setenv(key, value)
    overrides = ["workload=op", "resolution=64", "workload.dim=32", "workload.heads=2", "warmup=0", "repeats=3",
                 "accuracy=false", "flops_count=false", "device=cpu", "precision=fp32", "attention=sdpa", "threads=1"]
    (row,) = run_job(overrides, tmp_path)
    assert row.status == "ok", row.reason
    assert (row["slurm_job"], row["slurm_partition"], row["slurm_cpus"]) == ("40_2", "debug", 1)


def test_the_job_leaves_a_launchers_signal_handler_alone():
    """In a Slurm job the launcher's SIGTERM handler ends the job and its row carries Slurm's reason;
    the job's own handler (an `interrupted` row) is installed only where nobody else handles it."""
    import signal

    from suite.job import install_signal_handlers, on_signal

    def launcher(signum, frame):
        pass

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGTERM, launcher)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        install_signal_handlers()
        assert signal.getsignal(signal.SIGTERM) is launcher and signal.getsignal(signal.SIGHUP) is on_signal
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
