"""A Markdown report with figures (``figures.py``) from a results table.

    python -m suite.report results/sweeps/paper_speedup/results.parquet [--out DIR]

Figures for every device, tables of latency, speedup and memory per device,
dtype and workload, and every case that was not measured with its reason.
"""
from __future__ import annotations

import datetime as dt
import math
import sys
from pathlib import Path

import pandas as pd

from .args import OneLineParser
from .collect import BASELINES, add_variant, derive
from .figure_style import resolution_side
from .figures import NOT_OK, Figures, speedup_flagged
from .paper import PAPER_NAMES
from .records import flagged_mask
from .targets import section as targets_section
from .tables import REPORT_NEEDS, BadInput, checked, out_folder, read_rows

DERIVED = ("speedup_vs_vanilla", "speedup_vs_flash", "baseline_vanilla", "baseline_flash", "peak_tflops",
           "frac_of_peak")
SPLIT = ["device_name", "dtype", "workload", "direction", "timing", "model"]  # one table each: never mixed
FLAG_MARK = "*"


def load_results(path: str | Path, problems: list[str] | None = None) -> pd.DataFrame:
    """A results table (file or folder), checked; derived columns are (re)computed when missing.
    BadInput (one line) when it cannot be used; unreadable files that were skipped go to ``problems``."""
    return prepared(read_rows(path, problems if problems is not None else []), str(path))


def prepared(df: pd.DataFrame, source: str) -> pd.DataFrame:
    df = checked(df, source, REPORT_NEEDS)
    return add_variant(df) if all(c in df.columns for c in DERIVED) else derive(df)


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


def _label(res) -> str:
    """A resolution as tables show it: 224, 512x2048 (224.0 from an old table reads 224)."""
    side = resolution_side(res)
    return str(int(side)) if str(res).replace(".0", "").isdigit() and side == side else str(res)


def pivot(sub: pd.DataFrame, value: str, fmt: str = "{:.3g}", flags: pd.Series | None = None) -> pd.DataFrame:
    """variant x resolution; a case that was not measured shows its status instead of a number, a
    flagged one a ``*``, a case with several rows their median and how many."""
    flags = (flagged_mask(sub) if flags is None else flags).reindex(sub.index).fillna(False).astype(bool)
    cells = {}
    for (v, res), g in sub.groupby(["variant", "resolution"]):
        ok = g[(g["status"] == "ok") & g[value].notna()]
        if ok.empty:
            bad = g[g["status"] != "ok"]["status"]
            cells[(v, _label(res))] = NOT_OK.get(bad.iloc[0], bad.iloc[0]) if len(bad) else ""
            continue
        median = ok[value].median()
        text = f"{median:,.0f}" if fmt == "{:.3g}" and abs(median) >= 1000 else fmt.format(median)
        text += FLAG_MARK if flags[ok.index].any() else ""
        cells[(v, _label(res))] = text + (f" ({len(ok)} rows)" if len(ok) > 1 else "")
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


def write_report(table: str | Path | pd.DataFrame, out: str | Path | None = None,
                 problems: list[str] | None = None) -> Path:
    """Write every figure and ``report.md`` into ``out`` (default: ``report/`` beside the table, or in
    the folder given). BadInput (one line) for a table or folder that cannot be used."""
    problems = [] if problems is None else problems
    if isinstance(table, pd.DataFrame):
        df, source = prepared(table, "(in-memory table)"), "(in-memory table)"
        out = out_folder(out or "report")
    else:
        df, source = load_results(table, problems), str(table)
        out = out_folder(out or (Path(table) if Path(table).is_dir() else Path(table).parent) / "report")
    figs = Figures(df, out)
    figs.versus_resolution("latency_ms_p50", "p50 latency (ms)", "latency", "Latency")
    figs.speedup()
    figs.versus_resolution("peak_mem_mib", "peak memory (MiB)", "memory", "Peak memory", timing=False,
                           note="; CPU: torch allocations during one call (profiler), CUDA: max_memory_allocated")
    figs.pareto()
    figs.precision()
    lines = header_section(df, source, problems) + ["## Figures", ""]
    for png, caption in figs.written:
        lines += [f"![{png.stem}]({png.name})", "", f"*{caption}* (SVG: `{png.with_suffix('.svg').name}`)", ""]
    lines += targets_section(df) + tables_section(df) + flagged_section(df) + not_measured_section(df)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def header_section(df: pd.DataFrame, source: str, problems: list[str] = ()) -> list[str]:
    """Where the table came from, the machines, every status, what the derived columns mean."""
    lines = ["# Attention benchmark report", "",
             f"Source: `{source}` ({len(df)} rows), written {dt.datetime.now().isoformat(timespec='seconds')} "
             f"by `python -m suite.report`.", ""]
    lines += [f"- Not read (its rows are missing here): {p}" for p in problems] + ([""] if problems else [])
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
                         f"workload, direction, resolution and batch.")
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
    """Latency, speedup and memory per device, dtype, workload, direction (and timing mode, model)."""
    lines = ["## Tables", "", f"`{FLAG_MARK}`: timed under poor conditions (for a speedup: this row's timing or "
             f"the baseline's); see *Flagged timings*.", ""]
    flags = {short: speedup_flagged(df, short) for short in BASELINES if f"baseline_{short}" in df}
    split = [c for c in SPLIT if c in df]
    for keys, sub in df.groupby(split, dropna=False):
        name = " · ".join(str(k) for k, c in zip(keys, split) if str(k) not in ("", "nan", "eager"))
        lines += [f"### {name}", "", "p50 latency (ms):", "", md_table(pivot(sub, "latency_ms_p50")), ""]
        for short in flags:
            if sub[f"speedup_vs_{short}"].notna().any():
                lines += [f"Speedup over `{sub[f'baseline_{short}'].iloc[0]}` (x):", "",
                          md_table(pivot(sub, f"speedup_vs_{short}", "{:.2f}", flags[short])), ""]
        no_flags = pd.Series(False, index=sub.index)  # memory is not a timing
        lines += ["Peak memory (MiB):", "", md_table(pivot(sub, "peak_mem_mib", "{:.1f}", no_flags)), ""]
    return lines


def not_measured_section(df: pd.DataFrame) -> list[str]:
    bad = df[df["status"] != "ok"]
    lines = ["## Cases not measured", ""]
    if bad.empty:
        return lines + ["Every case ran (status ok).", ""]
    cols = ["device_name", "dtype", "workload", "direction", "variant", "resolution", "status", "reason"]
    bad = bad.assign(reason=bad["reason"].astype(str).str.slice(0, 200))
    return lines + [md_table(bad[cols].sort_values(cols[:6])), ""]


def flagged_section(df: pd.DataFrame) -> list[str]:
    """The measurements whose conditions were poor (ringed in the figures), with why."""
    lines = ["## Flagged timings", ""]
    if "timing_quality" not in df:
        return lines + ["This table records no measuring conditions (written before they were recorded).", ""]
    flagged = df[(df["status"] == "ok") & flagged_mask(df)]
    if flagged.empty:
        return lines + ["Every measured case was timed under good conditions (timing_quality ok).", ""]
    cols = ["device_name", "dtype", "workload", "direction", "variant", "resolution", "timing_quality", "timing_note"]
    lines += [f"{len(flagged)} of {int((df['status'] == 'ok').sum())} measured cases were timed under poor "
              f"conditions (ringed in red in the figures, `{FLAG_MARK}` in the tables, and so is every speedup "
              f"computed from them); read their numbers with care:", ""]
    return lines + [md_table(flagged[cols].sort_values(cols[:6])), ""]


def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(prog="python -m suite.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="results.parquet / results.csv, or a folder (its results.parquet files, "
                                  "else its job records)")
    ap.add_argument("--out", help="the folder for figures and report.md (default: report/ beside the table, "
                                  "or inside the folder given)")
    args = ap.parse_args(argv)
    problems: list[str] = []
    try:
        path = write_report(args.table, args.out, problems)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:  # the folder took the check but not the files (full disk, removed meanwhile)
        print(f"error: could not write the report ({e.strerror or e}: {e.filename or ''}); give --out a writable "
              f"folder", file=sys.stderr)
        raise SystemExit(2) from None
    for p in problems:
        print(f"warning: could not read {p}", file=sys.stderr)
    n = sum(line.startswith("![") for line in path.read_text().splitlines())
    print(f"{n} figures (PNG + SVG) and {path}")


if __name__ == "__main__":
    main()
