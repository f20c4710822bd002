"""suite.compare: two runs matched by case, verdicts from both spreads, a
regression check that fails on an attention slowed on purpose; flagged timings
shown but never judged; outputs beside NEW; ratios on a log axis."""
import time
from pathlib import Path

import pandas as pd
import pytest

from attentions import exact
from suite import compare as C
from suite.records import write_records
from test_report import row  # noqa: E402  (tests/suite is on sys.path under pytest)

# Lenient measuring conditions: on a shared 2-core machine most rows would be flagged contended, and a
# flagged row is never judged; these tests check the verdicts, so every timing here is vouched for.
LENIENT = ["noise_pct=100000", "contention_cores=1000", "threads=1"]
SMOKE = ["experiment=smoke", "workload=op", "resolution=64", "repeats=20", "retries=0", "accuracy=false",
         "flops_count=false", *LENIENT]


def sweep(run_job, folder, attentions=("vanilla_lepe", "elfatt")):
    for a in attentions:
        run_job([*SMOKE, f"attention={a}"], folder / a)


def test_a_slowed_attention_fails_the_check(run_job, tmp_path, monkeypatch, capsys):
    sweep(run_job, tmp_path / "base")
    real = exact.VanillaAttention.core

    def slowed(self, q, k, v, hw):  # 200 ms more per call: beyond the noise of a busy shared machine
        time.sleep(0.2)
        return real(self, q, k, v, hw)

    monkeypatch.setattr(exact.VanillaAttention, "core", slowed)
    sweep(run_job, tmp_path / "new", ("vanilla_lepe", "elfatt", "sdpa"))
    # 1000%: the slowed case is about 600x slower (0.3 ms -> 200 ms); a busy neighbour on a shared machine can
    # make another case several times slower (one torch thread keeps that within reach)
    code = C.main([str(tmp_path / "base"), str(tmp_path / "new"), "--fail-if-slower", "1000", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and "vanilla_lepe op 64px fp32" in err and "elfatt" not in err
    row = next(line for line in out.splitlines() if line.startswith("| vanilla_lepe"))
    assert "| slower |" in row
    assert "Cases only in NEW: sdpa op 64px fp32" in out
    assert (tmp_path / "compare.md").exists() and (tmp_path / "compare.png").stat().st_size > 5000


def test_same_run_compared_with_itself_passes(run_job, tmp_path, capsys):
    sweep(run_job, tmp_path / "a")
    assert C.main([str(tmp_path / "a"), str(tmp_path / "a"), "--fail-if-slower", "0", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("| same |") == 2


def test_verdicts_use_both_spreads():
    base = {"latency_ms_p10": 1.0, "latency_ms_p50": 1.1, "latency_ms_p90": 1.2}
    assert C.verdict(base, {"latency_ms_p10": 1.15, "latency_ms_p50": 1.3, "latency_ms_p90": 1.4}) == "same"
    assert C.verdict(base, {"latency_ms_p10": 1.25, "latency_ms_p50": 1.3, "latency_ms_p90": 1.4}) == "slower"
    assert C.verdict(base, {"latency_ms_p10": 0.7, "latency_ms_p50": 0.8, "latency_ms_p90": 0.9}) == "faster"


def test_what_differs_between_machines_is_shown(run_job, tmp_path):
    from suite.collect import load_tables

    sweep(run_job, tmp_path / "a", ("elfatt",))
    base = load_tables(tmp_path / "a")
    # a tenth of the base latencies and spreads: faster than any noise of the base run
    new = base.assign(device_name="Another GPU", git_sha="abc123", latency_ms_p10=base["latency_ms_p50"] * 0.09,
                      latency_ms_p50=base["latency_ms_p50"] * 0.1, latency_ms_p90=base["latency_ms_p50"] * 0.11)
    table, facts = C.compare(base, new)
    assert table["verdict"].tolist() == ["faster"] and table["ratio"].iloc[0] == pytest.approx(0.1)
    assert {c for c, _, _ in facts["differs"]} >= {"device_name", "git_sha"}


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert C.main([str(tmp_path / "nope"), str(tmp_path / "nope2")]) == 2
    assert capsys.readouterr().err.startswith("error:")


def runs(tmp_path, base_rows, new_rows) -> tuple[Path, Path]:
    write_records(base_rows, tmp_path / "base")
    write_records(new_rows, tmp_path / "new")
    return tmp_path / "base" / "records.parquet", tmp_path / "new" / "records.parquet"


def test_flagged_rows_are_shown_never_counted(tmp_path, capsys):
    base = [row("elfatt", latency=1.0, timing_quality="ok"), row("swin", latency=1.0, timing_quality="ok"),
            row("performer", latency=1.0, timing_quality="ok")]
    new = [row("elfatt", latency=170.0, timing_quality="contended"),  # 16861% slower, but contended
           row("swin", latency=2.0, timing_quality="ok"),  # a trusted regression
           row("performer", latency=0.1, timing_quality="noisy")]  # "faster", but noisy
    code = C.main([*map(str, runs(tmp_path, base, new)), "--fail-if-slower", "10"])
    out, err = capsys.readouterr()
    assert code == 1 and "swin" in err and "elfatt" not in err and "performer" not in err
    lines = {line.split(" |")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    elfatt, performer = lines["elfatt layer 1024px fp16"], lines["performer layer 1024px fp16"]
    assert "| untrusted |" in elfatt and "new contended" in elfatt
    assert "| untrusted |" in performer and "new noisy" in performer
    assert "| slower |" in lines["swin layer 1024px fp16"]
    assert "3 case(s) in both: 0 faster, 0 same, 1 slower, 2 untrusted" in out
    table, facts = C.compare(*(pd.read_parquet(p) for p in runs(tmp_path / "2", base[:1], new[:1])), fail_pct=0)
    assert facts["regressions"] == [] and table["verdict"].tolist() == ["untrusted"]


def test_outputs_go_beside_new_never_the_current_folder(tmp_path, monkeypatch, capsys):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    base, new = runs(tmp_path, [row(latency=1.0)], [row(latency=1.0)])
    assert C.main([str(base), str(new)]) == 0  # NEW is a table file: its folder
    assert (new.parent / "compare.md").exists() and (new.parent / "compare.png").exists()
    assert C.main([str(base.parent), str(new.parent)]) == 0  # NEW is a folder: that folder
    assert C.main([str(base), str(new), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "compare.md").exists()
    assert list(here.iterdir()) == []
    assert f"written: {new.parent / 'compare.md'}" in capsys.readouterr().out


def test_the_figure_shows_ratios_on_a_log_axis(tmp_path):
    import matplotlib.pyplot as plt

    base, new = runs(tmp_path, [row("elfatt", latency=1.0), row("swin", latency=1.0)],
                     [row("elfatt", latency=0.5), row("swin", latency=2.0, timing_quality="throttled")])
    table, _ = C.compare(pd.read_parquet(base), pd.read_parquet(new))
    fig = C.draw(table)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    bars = sorted(ax.patches, key=lambda p: p.get_y())[:2]
    widths = [abs(ax.transData.transform((b.get_x() + b.get_width(), 0))[0] - ax.transData.transform((1, 0))[0])
              for b in bars]
    assert widths[0] == pytest.approx(widths[1], rel=1e-6)  # 0.5x and 2x drawn equally long
    assert any("throttled" in t.get_text() for t in ax.texts)
    plt.close(fig)


def test_columns_empty_on_both_sides_are_no_difference():
    base = pd.DataFrame({"cuda_version": [float("nan")], "threads": [4.0], "git_sha": ["a"], "hostname": [""]})
    new = pd.DataFrame({"cuda_version": [""], "threads": [4], "git_sha": ["b"], "hostname": [float("nan")]})
    assert C.differences(base, new) == [("git_sha", "a", "b")]


def test_a_case_that_ran_other_code_is_marked(tmp_path, capsys):
    """impl_ran differs (the fast path fell back to the reference): the row says so, and the
    regression still counts: a fallback to a slower path is a real regression."""
    base = [row("elfatt", latency=1.0, impl_ran="triton"), row("swin", latency=1.0, impl_ran="reference")]
    new = [row("elfatt", latency=3.0, impl_ran="reference"), row("swin", latency=1.0, impl_ran="reference")]
    code = C.main([*map(str, runs(tmp_path, base, new)), "--fail-if-slower", "10"])
    out, err = capsys.readouterr()
    lines = {line.split(" |")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert lines["elfatt layer 1024px fp16"].endswith("| triton -> reference |")
    assert lines["swin layer 1024px fp16"].endswith("|  |")
    assert "1 case(s) ran a different kernel or path" in out
    assert code == 1 and "elfatt" in err
    table, _ = C.compare(*(pd.read_parquet(p) for p in runs(tmp_path / "2", base, new)))
    assert table.set_index("case")["ran"].to_dict() == {"elfatt layer 1024px fp16": "triton -> reference",
                                                         "swin layer 1024px fp16": ""}
    assert any("[ran triton -> reference]" in t.get_text() for t in C.draw(table).axes[0].texts)
