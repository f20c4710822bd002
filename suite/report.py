"""A Markdown report with figures (``figures.py``) from a results table.

    python -m suite.report results/sweeps/paper_speedup/results.parquet [--out DIR]

Figures for every device, tables of latency, speedup and memory per device,
dtype and workload, and every case that was not measured with its reason.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
from pathlib import Path

import pandas as pd

from .collect import BASELINES, PAPER_NAMES, TableError, derive, read_table
from .figures import NOT_OK, Figures, resolution_side
from .records import flagged_mask

def load_results(path: str | Path) -> pd.DataFrame:
    """A results table; derived columns are (re)computed when missing. TableError when unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.parquet"
    df = read_table(path)
    return df if "speedup_vs_vanilla" in df.columns else derive(df)


# -- the Markdown report ---------------------------------------------------------
def md_table(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[_cell(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells[1:]]
    return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def pivot(sub: pd.DataFrame, value: str, fmt: str = "{:.3g}") -> pd.DataFrame:
    """variant x resolution; a case that was not measured shows its status instead of a number."""
    cells = {}
    for _, r in sub.iterrows():
        val = r.get(value)
        text = fmt.format(val) if r["status"] == "ok" and val == val and val is not None else (
            NOT_OK.get(r["status"], r["status"]) if r["status"] != "ok" else "")
        cells[(r["variant"], str(r["resolution"]))] = text
    variants = sorted({k[0] for k in cells})
    res = sorted({k[1] for k in cells}, key=resolution_side)
    rows = [[v] + [cells.get((v, x), "") for x in res] for v in variants]
    return pd.DataFrame(rows, columns=["variant"] + [f"{x} px" for x in res])


def _environment_table(df: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("device_name", "device", "hostname", "torch_version", "cuda_version", "git_sha") if c in df]
    g = df.groupby(cols, dropna=False)
    out = g.size().rename("rows").reset_index()
    out["ok"] = g["status"].apply(lambda s: int((s == "ok").sum())).to_numpy()
    return out


def write_report(table: str | Path | pd.DataFrame, out: str | Path | None = None) -> Path:
    """Write every figure and ``report.md`` into ``out`` (default: ``report/`` beside the table)."""
    if isinstance(table, pd.DataFrame):
        df, source = (table if "speedup_vs_vanilla" in table else derive(table)), "(in-memory table)"
        out = Path(out or "report")
    else:
        df, source = load_results(table), str(table)
        out = Path(out or Path(table).parent / "report")
    out.mkdir(parents=True, exist_ok=True)
    figs = Figures(df, out)
    figs.versus_resolution("latency_ms_p50", "p50 latency (ms)", "latency", "Latency")
    figs.speedup()
    figs.versus_resolution("peak_mem_mib", "peak memory (MiB)", "memory", "Peak memory",
                           note="; CPU: torch allocations during one call (profiler), CUDA: max_memory_allocated")
    figs.pareto()
    figs.precision()
    lines = header_section(df, source) + ["## Figures", ""]
    for png, caption in figs.written:
        lines += [f"![{png.stem}]({png.name})", "", f"*{caption}* (SVG: `{png.with_suffix('.svg').name}`)", ""]
    lines += tables_section(df) + flagged_section(df) + not_measured_section(df)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def header_section(df: pd.DataFrame, source: str) -> list[str]:
    """Where the table came from, the machines, every status, what the derived columns mean."""
    lines = ["# Attention benchmark report", "",
             f"Source: `{source}` ({len(df)} rows), written {dt.datetime.now().isoformat(timespec='seconds')} "
             f"by `python -m suite.report`.", ""]
    if (df["device"] == "cpu").all():
        lines += ["**CPU results.** Every row here was measured on a CPU: they check the pipeline and show "
                  "trends; they are not comparable with the paper's GPU numbers.", ""]
    lines += ["## Machines", "", md_table(_environment_table(df)), ""]
    counts = df.groupby(["device_name", "status"]).size().unstack(fill_value=0).reset_index()
    lines += ["## Status of every case", "", md_table(counts), ""]
    for short in BASELINES:
        col = f"baseline_{short}"
        if col in df and df[col].iloc[0]:
            lines.append(f"- `speedup_vs_{short}`: against `{df[col].iloc[0]}` on the same device, dtype, "
                         f"workload, resolution and batch.")
    present = [f"`{v}` = {PAPER_NAMES[v]}" for v in PAPER_NAMES if v in set(df["variant"])]
    if present:
        lines.append("- The paper's names for the presets here: " + "; ".join(present) + ".")
    if df["peak_tflops"].notna().any():
        lines.append("- `frac_of_peak` / `frac_of_roofline`: analytic TFLOP/s over the datasheet dense peak "
                     "/ over min(peak, arithmetic intensity x bandwidth) (suite/collect.py PEAKS).")
    else:
        lines.append("- No device here has a known datasheet peak (CPU or unlisted GPU): no roofline columns.")
    return lines + [""]


def tables_section(df: pd.DataFrame) -> list[str]:
    lines = ["## Tables", ""]
    for (dev, dt_, wl), sub in df.groupby(["device_name", "dtype", "workload"]):
        lines += [f"### {dev} · {dt_} · {wl}", "", "p50 latency (ms):", "", md_table(pivot(sub, "latency_ms_p50")), ""]
        for short in BASELINES:
            if sub[f"speedup_vs_{short}"].notna().any():
                lines += [f"Speedup over `{sub[f'baseline_{short}'].iloc[0]}` (x):", "",
                          md_table(pivot(sub, f"speedup_vs_{short}", "{:.2f}")), ""]
        lines += ["Peak memory (MiB):", "", md_table(pivot(sub, "peak_mem_mib", "{:.1f}")), ""]
    return lines


def not_measured_section(df: pd.DataFrame) -> list[str]:
    bad = df[df["status"] != "ok"]
    lines = ["## Cases not measured", ""]
    if bad.empty:
        return lines + ["Every case ran (status ok).", ""]
    cols = ["device_name", "dtype", "workload", "variant", "resolution", "status", "reason"]
    return lines + [md_table(bad[cols].sort_values(cols[:5]).assign(reason=bad["reason"].str.slice(0, 200))), ""]


def flagged_section(df: pd.DataFrame) -> list[str]:
    """The measurements whose conditions were poor (ringed in the figures), with why."""
    lines = ["## Flagged timings", ""]
    if "timing_quality" not in df:
        return lines + ["This table records no measuring conditions (written before they were recorded).", ""]
    flagged = df[(df["status"] == "ok") & flagged_mask(df)]
    if flagged.empty:
        return lines + ["Every measured case was timed under good conditions (timing_quality ok).", ""]
    cols = ["device_name", "dtype", "workload", "variant", "resolution", "timing_quality", "timing_note"]
    lines += [f"{len(flagged)} of {int((df['status'] == 'ok').sum())} measured cases were timed under poor "
              f"conditions; read their numbers with care:", ""]
    return lines + [md_table(flagged[cols].sort_values(cols[:5])), ""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m suite.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="results.parquet / results.csv (or a directory holding results.parquet)")
    ap.add_argument("--out", help="where figures and report.md go (default: report/ beside the table)")
    args = ap.parse_args(argv)
    if not Path(args.table).exists():
        print(f"error: {args.table}: no such file; make one with python -m suite.collect <sweep dir>", file=sys.stderr)
        raise SystemExit(2)
    try:
        path = write_report(args.table, args.out)
    except (TableError, KeyError) as e:
        what = f"is not a results table (no column {e})" if isinstance(e, KeyError) else str(e)
        print(f"error: {args.table}: {what}; make one with python -m suite.collect <sweep dir>", file=sys.stderr)
        raise SystemExit(2) from None
    n = len(list(path.parent.glob("*.png")))
    print(f"{n} figures (PNG + SVG) and {path}")


if __name__ == "__main__":
    main()
