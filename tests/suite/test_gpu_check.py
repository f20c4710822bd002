"""suite.gpu_check: a plan within the budget (no GPU needed), a step stopped at its
limit keeps its rows and the summary says so, targets judged from rows."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from suite import gpu_check as G
from suite import targets as T

ROOT = Path(__file__).resolve().parents[2]


def test_the_plan_fits_the_budget_and_cuts_what_does_not():
    for minutes in (4, 10, 30):
        planned = G.plan(G.STEPS, minutes * 60, dry=False)
        assert sum(p.cap_s for p in planned) <= minutes * 60
        run = [p.step.name for p in planned if p.cap_s]
        assert run == [s.name for s in G.STEPS][: len(run)]  # priority order: what runs is a prefix
        assert all(p.why.startswith("cut") for p in planned if not p.cap_s)
    assert [p.step.name for p in G.plan(G.STEPS, 10 * 60, dry=False) if p.cap_s][:2] == ["correct", "targets"]
    lines = G.plan_lines(G.plan(G.STEPS, 600, dry=False), 600, dry=False)
    assert all(len(line) <= 80 for line in lines) and "budget 10.0 min" in lines[0]


def test_plan_needs_no_gpu(capsys):
    assert G.main(["--plan", "--minutes", "6"]) == 0
    out = capsys.readouterr().out
    assert "correct" in out and re.search(r"~\d+\.\d min", out)
    assert G.main(["--minutes", "nan"]) == 2


@pytest.mark.slow
def test_a_step_stopped_at_its_limit_keeps_its_rows_and_says_so(tmp_path):
    """A sweep whose second case would run for minutes, under a 45 s limit: the first case's row stays,
    the running one becomes an interrupted row (SIGTERM), the summary says the step was stopped."""
    step = G.Step("slow", "a quick case then a slow one", ("-m", "attention=vanilla"), 2, 1.0,
                  dry=("resolution=64,1024", "repeats=300", "workload.dim=64", "workload.heads=4"))
    planned = [G.Planned(step, 45.0)]
    env = {k: v for k, v in os.environ.items()} | {"PYTHONPATH": str(ROOT)}
    G.run_step(planned[0], tmp_path, env, dry=True)
    assert planned[0].status.startswith("stopped at its 0.8 min limit")
    assert planned[0].rows.get("ok") == 1 and planned[0].rows.get("interrupted") == 1
    text = G.summary(planned, tmp_path, 60, True, 0.0)
    assert "stopped at its 0.8 min limit (rows written before it are kept)" in text
    assert "Not complete: slow" in text and (tmp_path / "summary.md").read_text() == text
    assert not list(tmp_path.rglob("*.tmp"))


def _row(variant, res, ms, direction="fwd", quality="ok", **kw):
    return dict(workload="op", variant=variant, resolution=res, direction=direction, dtype="fp16", status="ok",
                reason="", timing="eager", device_name="GPU-A", latency_ms_p50=ms, timing_quality=quality,
                batch_size=1, tokens=4096, dim=768, peak_extra_mem_mib=6.0, **kw)


def test_targets_are_judged_from_rows():
    df = pd.DataFrame([_row("elfatt_fast", "1024", 0.05), _row("sdpa_cudnn", "1024", 0.117),
                       _row("sdpa_flash", "1024", 0.19), _row("elfatt_fast", "2048", 1.0),
                       _row("sdpa_cudnn", "2048", 1.84, quality="contended"),
                       _row("elfatt_fast", "1024", 1.9, "fwd_bwd"), _row("sdpa_cudnn", "1024", 0.45, "fwd_bwd")])
    t = T.table(df).set_index("target")
    assert t.loc["1024 px: no slower than the fastest SDPA", "verdict"] == "met"
    assert t.loc["1024 px: no slower than the fastest SDPA", "measured"].startswith("2.34x (sdpa_cudnn")
    assert t.loc["2048 px: >= 3x the fastest SDPA", "verdict"] == "missed (a timing behind it is flagged)"
    assert t.loc["fwd+bwd, 1024 px: no slower than the fastest SDPA", "verdict"] == "missed"
    assert t.loc["3072 px: fast p50 <= 0.6 ms", "verdict"] == "owed"
    assert T.section(df)[0] == "## Targets" and T.section(df.assign(variant="other")) == []
