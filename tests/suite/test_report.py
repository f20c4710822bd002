"""collect (merge, dedupe, derived columns) and report (figures + Markdown) on synthetic rows."""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from suite import collect as C
from suite import report as R
from suite.figure_style import Measure, draw_lines
from suite.records import Record, write_records

ROOT = Path(__file__).resolve().parents[2]


def row(attention="vanilla", options=None, device_name="GPU-A", device="cuda", dtype="fp16", workload="layer",
        resolution=1024, status="ok", latency=None, timestamp="2026-01-01T00:00:00+00:00", variant=None,
        **extra) -> Record:
    options = {"lepe": True} if options is None and attention == "vanilla" else (options or {})
    variant = variant or {("vanilla", True): "vanilla_lepe", ("sdpa", "flash"): "sdpa_flash"}.get(
        (attention, options.get("lepe", options.get("impl"))), attention)
    g = resolution // 16
    ok = status == "ok"
    lat = latency if latency is not None else 1.0
    return Record(
        attention=attention, variant=variant, workload=workload, resolution=resolution, patch_size=16, grid_h=g, grid_w=g,
        tokens=g * g, batch_size=1, dim=768, heads=12, dtype=dtype, device=device, device_name=device_name,
        attention_options=json.dumps(options, sort_keys=True), status=status,
        reason="" if ok else f"{status}: synthetic", latency_ms_p50=lat if ok else math.nan,
        latency_ms_p10=lat * 0.9 if ok else math.nan, latency_ms_p90=lat * 1.1 if ok else math.nan,
        throughput_per_s=1e3 / lat if ok else math.nan, peak_mem_mib=lat * 10 if ok else math.nan,
        flops_analytic=1e12, tflops_per_s=1.0 / lat if ok else math.nan, hostname="h1", timestamp=timestamp,
        rel_err_vs_exact=(1e-3 if attention in ("vanilla", "sdpa") else 0.5) if ok else math.nan,
        rel_err_vs_fp64=(1e-3 if dtype != "fp32" else 1e-7) if ok else math.nan, **extra,
    )


SDPA_FLASH = {"impl": "flash"}


def test_speedup_against_the_same_case_on_the_same_device(tmp_path):
    rows = [row(latency=10.0), row("sdpa", SDPA_FLASH, latency=4.0), row("elfatt", latency=2.0),
            row("elfatt", resolution=2048, latency=3.0),  # no baseline at 2048: NaN, not a wrong pairing
            row("elfatt", dtype="bf16", latency=1.0),  # no bf16 baseline
            row("vanilla", resolution=2048, status="oom")]
    write_records(rows, tmp_path / "a")
    df = pd.read_parquet(C.collect([tmp_path / "a"]))
    by = df.set_index(["variant", "resolution", "dtype"])
    assert by.loc[("elfatt", 1024, "fp16"), "speedup_vs_vanilla"] == pytest.approx(5.0)
    assert by.loc[("elfatt", 1024, "fp16"), "speedup_vs_flash"] == pytest.approx(2.0)
    assert by.loc[("vanilla_lepe", 1024, "fp16"), "speedup_vs_vanilla"] == pytest.approx(1.0)
    assert math.isnan(by.loc[("elfatt", 2048, "fp16"), "speedup_vs_vanilla"])
    assert math.isnan(by.loc[("elfatt", 1024, "bf16"), "speedup_vs_vanilla"])
    assert math.isnan(by.loc[("vanilla_lepe", 2048, "fp16"), "speedup_vs_vanilla"])
    assert set(df["baseline_vanilla"]) == {"vanilla_lepe"}
    assert set(df["baseline_flash"]) == {"sdpa_flash"}
    assert (tmp_path / "a" / "results.csv").exists()


def test_collect_merges_two_dirs_with_different_devices(tmp_path):
    write_records([row(latency=10.0)], tmp_path / "a" / "0_vanilla")
    write_records([row("elfatt", latency=2.0)], tmp_path / "a" / "1_elfatt")
    write_records([row(device_name="GPU-B", latency=8.0)], tmp_path / "b" / "0_vanilla")
    write_records([row("elfatt", device_name="GPU-B", latency=4.0)], tmp_path / "b" / "1_elfatt")
    out = C.collect([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "merged")
    df = pd.read_parquet(out)
    assert len(df) == 4 and set(df["device_name"]) == {"GPU-A", "GPU-B"}
    sp = df[df["attention"] == "elfatt"].set_index("device_name")["speedup_vs_vanilla"]
    assert sp["GPU-A"] == pytest.approx(5.0) and sp["GPU-B"] == pytest.approx(2.0)  # never across devices
    with pytest.raises(ValueError, match="--out"):
        C.collect([tmp_path / "a", tmp_path / "b"])


def test_a_rerun_keeps_the_newest_ok_row(tmp_path):
    write_records([row("elfatt", latency=2.0, timestamp="2026-01-01T00:00:00+00:00")], tmp_path / "0_old")
    write_records([row("elfatt", status="oom", timestamp="2026-01-02T00:00:00+00:00")], tmp_path / "0_new")
    write_records([row("elfatt", latency=3.0, resolution=512)], tmp_path / "1_other")
    df = C.load([tmp_path])
    assert sorted(zip(df["resolution"], df["status"])) == [(512, "ok"), (1024, "ok")]


def test_device_peaks_from_datasheets():
    assert C.device_peak("NVIDIA H100 80GB HBM3", "fp16") == (989.4, 3350)
    assert C.device_peak("NVIDIA H100 PCIe", "bf16") == (756.5, 2000)
    assert C.device_peak("NVIDIA H200", "fp16")[1] == 4800
    assert C.device_peak("NVIDIA H20", "fp16") == (148.0, 4000)
    assert C.device_peak("NVIDIA A100-SXM4-80GB", "fp32") == (19.5, 2039)
    assert C.device_peak("NVIDIA L4", "fp16")[0] == 121.0 and C.device_peak("NVIDIA L40S", "fp16")[0] == 362.1
    assert C.device_peak("NVIDIA H100 80GB HBM3", "amp")[0] == 989.4
    assert all(math.isnan(x) for x in C.device_peak("AMD EPYC", "fp32"))


def test_roofline_columns(tmp_path):
    write_records([row("elfatt", device_name="NVIDIA H100 80GB HBM3", latency=2.0)], tmp_path)
    r = pd.read_parquet(C.collect([tmp_path])).iloc[0]
    assert r["peak_tflops"] == 989.4 and r["frac_of_peak"] == pytest.approx(0.5 / 989.4)
    assert r["roofline_tflops"] <= r["peak_tflops"] and r["frac_of_roofline"] >= r["frac_of_peak"]


def _table(tmp_path) -> Path:
    rows = []
    for dtype in ("fp16", "bf16"):
        for wl in ("layer",):  # one workload keeps the test fast; facets are per workload anyway
            for res, scale in ((224, 1), (1024, 20), (4096, 300)):
                rows += [row("vanilla", dtype=dtype, workload=wl, resolution=res, latency=scale * 2.0)
                         if res < 4096 else row("vanilla", dtype=dtype, workload=wl, resolution=res, status="skipped"),
                         row("sdpa", SDPA_FLASH, dtype=dtype, workload=wl, resolution=res, latency=scale * 0.8),
                         row("elfatt", dtype=dtype, workload=wl, resolution=res, latency=scale * 0.3),
                         row("cswin", {"stripe": 8}, dtype=dtype, workload=wl, resolution=res, latency=scale * 0.5)
                         if res > 224 else row("cswin", {"stripe": 8}, dtype=dtype, workload=wl, resolution=res,
                                               status="invalid")]
    rows.append(row("sdpa", SDPA_FLASH, dtype="bf16", workload="op", resolution=1024, status="unsupported"))
    write_records(rows, tmp_path / "sweep")
    return C.collect([tmp_path / "sweep"])


def test_report_writes_every_figure_and_lists_missing_cases(tmp_path):
    path = R.write_report(_table(tmp_path), tmp_path / "report")
    names = {p.stem.split("__")[0] for p in (tmp_path / "report").glob("*.png")}
    assert names == {"latency", "speedup", "memory", "pareto", "precision"}
    for png in (tmp_path / "report").glob("*.png"):
        assert png.with_suffix(".svg").exists() and png.stat().st_size > 10_000
    text = path.read_text()
    assert "GPU-A" in text and "## Cases not measured" in text
    assert "skipped: synthetic" in text and "invalid: synthetic" in text
    assert "| vanilla_lepe | 2 | 40 | skipped |" in text  # the table says why a cell is empty


def test_missing_cases_are_drawn_as_x_at_the_top(tmp_path):
    df = R.load_results(_table(tmp_path))
    figs = R.Figures(df, tmp_path)
    fig, ax = figs.plt.subplots()
    draw_lines(ax, df[(df["dtype"] == "fp16") & (df["workload"] == "layer")], Measure("latency_ms_p50", "ms"),
               figs.styles)
    xs = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert len(xs) == 2  # vanilla skipped at 4096, cswin invalid at 224
    assert {t.get_text() for t in ax.texts} == {"skipped", "invalid"}
    figs.plt.close(fig)


def test_clis_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        R.main([str(tmp_path / "nope.parquet")])
    assert e.value.code == 2 and "python -m suite.collect" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        C.main([str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err
    write_records([row(latency=10.0), row("elfatt", latency=2.0)], tmp_path / "sweep" / "0")
    C.main([str(tmp_path / "sweep")])
    assert "2 rows (2 ok) from 1 device(s)" in capsys.readouterr().out
