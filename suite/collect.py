"""Merge every job's records into one tidy table, with derived columns.

    python -m suite.collect results/sweeps/paper_speedup            # -> results.parquet/.csv there
    python -m suite.collect results/reference/cpu/results.parquet gpu_sweep/ --out results/merged

Each argument is a sweep/run directory (every ``records.parquet`` below it)
or a table file (``records.parquet``/``results.parquet``/``.csv``). One row
per measured case; the columns are the Record columns plus derived ones:

- ``speedup_vs_vanilla`` / ``speedup_vs_flash``: baseline p50 latency / this
  row's p50, against the same case (the ``case`` column less the attention:
  every other setting that changes what is measured) on the same device name,
  run with the baseline preset (``baseline_vanilla`` / ``baseline_flash`` name
  it). Rows from other machines never pair up. ``speedup_vs_<name>_flagged`` is
  true where either timing behind that speedup is flagged (noisy, contended, throttled).
- ``peak_tflops``, ``peak_gbps``, ``arith_intensity``, ``frac_of_peak``,
  ``frac_of_roofline``: where the GPU's datasheet peak is known (PEAKS).

Inside one directory a case measured twice on one machine (a rerun) keeps
one row in the merged table: its newest ``ok`` row, else its newest row; a
row of a job that never finished (cancelled, timeout, preempted, interrupted)
gives way to an ok row of its case (the job tables keep every row; collect
says how many rows it superseded). A case
is the ``case`` column (every setting that changes what is measured: seed,
threads, model weights... included). Tables from different arguments are
concatenated as they are, so different machines stay distinguishable by
device_name, hostname and the version columns.
"""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pandas as pd

from .args import OneLineParser
from .records import (ATTENTION_KEYS, atomic_write, case_key, first_line, flagged_mask, ordered_columns,
                      read_job_records, read_table_file)

DERIVED = ("speedup_vs_vanilla", "speedup_vs_flash", "baseline_vanilla", "baseline_flash",
           "speedup_vs_vanilla_flagged", "speedup_vs_flash_flagged",
           "peak_tflops", "peak_gbps", "arith_intensity", "roofline_tflops", "frac_of_peak", "frac_of_roofline",
           "job_dir")
UNFINISHED = ("cancelled", "timeout", "preempted", "interrupted")
# The first preset of each list that the table holds is the baseline.
BASELINES = {
    "vanilla": ["vanilla_lepe", "vanilla"],  # the paper's VaniATT / GLOBAL is vanilla + LePE
    "flash": ["sdpa_flash", "flash_attn"],  # FlashAttention-2 (torch's flash backend is FA2)
}

# Dense peaks (no 2:4 sparsity) from NVIDIA's datasheets: fp16/bf16 = tensor-core
# dense, fp32 = non-tensor FP32 (torch does not use TF32 for fp32 matmuls unless
# asked), memory bandwidth in GB/s. First matching pattern wins (order matters).
PEAKS: list[tuple[str, dict[str, float], float]] = [
    (r"H100.*NVL", {"fp16": 835.5, "bf16": 835.5, "fp32": 59.8}, 3900),  # H100 NVL datasheet
    (r"H100.*PCIe", {"fp16": 756.5, "bf16": 756.5, "fp32": 51.2}, 2000),  # H100 PCIe 80GB datasheet
    (r"H100", {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9}, 3350),  # H100 SXM5 80GB HBM3 datasheet
    (r"H200", {"fp16": 989.4, "bf16": 989.4, "fp32": 66.9}, 4800),  # H200 SXM datasheet (H100 compute, HBM3e)
    (r"\bH20\b", {"fp16": 148.0, "bf16": 148.0, "fp32": 44.0}, 4000),  # H20 spec sheet as published by OEMs
    (r"A100.*80GB PCIe", {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5}, 1935),  # A100 datasheet
    (r"A100-SXM4-80GB", {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5}, 2039),
    (r"A100", {"fp16": 312.0, "bf16": 312.0, "fp32": 19.5}, 1555),  # 40GB SXM4 / PCIe
    (r"L40S", {"fp16": 362.1, "bf16": 362.1, "fp32": 91.6}, 864),  # L40S datasheet
    (r"\bL4\b", {"fp16": 121.0, "bf16": 121.0, "fp32": 30.3}, 300),  # L4 datasheet
    (r"\bA10\b", {"fp16": 125.0, "bf16": 125.0, "fp32": 31.2}, 600),  # A10 datasheet
    (r"RTX 4090", {"fp16": 165.2, "bf16": 165.2, "fp32": 82.6}, 1008),  # Ada whitepaper, FP32 accumulate
    (r"\bT4\b", {"fp16": 65.0, "fp32": 8.1}, 320),  # T4 datasheet (no bf16)
    (r"V100", {"fp16": 125.0, "fp32": 15.7}, 900),  # V100 SXM2 datasheet (no bf16)
]
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "amp": 4}


def device_peak(device_name: str, dtype: str) -> tuple[float, float]:
    """(peak TFLOP/s, peak GB/s) for a GPU name and dtype; NaN when unknown."""
    compute = {"amp": "fp16"}.get(dtype, dtype)  # amp runs its matmuls in fp16 on CUDA
    for pattern, tflops, gbps in PEAKS:
        if re.search(pattern, str(device_name)):
            return tflops.get(compute, math.nan), float(gbps)
    return math.nan, math.nan


# -- loading ------------------------------------------------------------------
class TableError(ValueError):
    """A results table that cannot be read (and has no readable CSV beside it)."""


def read_table(path: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """A table file; an unreadable .parquet falls back to the .csv beside it (named in ``problems``)."""
    try:
        return read_table_file(path)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, not a table
        why = f"{path}: {first_line(e)}"
    twin = path.with_suffix(".csv")
    if path.suffix == ".parquet" and twin.exists():
        try:
            df = read_table_file(twin)
        except Exception:  # noqa: BLE001
            pass
        else:
            if problems is not None:
                problems.append(f"{why} (read {twin.name} instead)")
            return df
    raise TableError(f"cannot read {why}")


def dedupe(df: pd.DataFrame, said: list[str] | None = None) -> pd.DataFrame:
    """One row per case, device name and host: the newest ok row, else the newest
    row. ``said`` receives one line on how many rows were superseded and why."""
    if df.empty:
        return df
    keys = ["\x1f".join((case_key(r), str(r.get("device_name", "")), str(r.get("hostname", ""))))
            for r in df.to_dict("records")]
    order = df.assign(_key=keys, _ok=(df["status"] == "ok").astype(int))
    order = order.sort_values(["_ok", "timestamp"], ascending=[False, False], kind="stable")
    kept = order.drop_duplicates("_key")
    # a job that never finished (cancelled, timed out, preempted, interrupted) is superseded by an ok row
    # of its case measured anywhere: its row may not know the device name it would have had
    done = {case_key(r) for r in kept[kept["_ok"] == 1].to_dict("records")}
    superseded = pd.Series([case_key(r) in done for r in kept.to_dict("records")], index=kept.index)
    kept = kept[~(kept["status"].isin(UNFINISHED) & superseded)]
    if said is not None and len(kept) < len(df):
        by_ok = int(((order["_ok"] == 0) & order.duplicated("_key") & order["_key"].isin(
            kept.loc[kept["_ok"] == 1, "_key"])).sum())
        said.append(f"{len(df) - len(kept)} of {len(df)} rows superseded: a case measured more than once on one "
                    f"machine keeps its newest ok row ({by_ok} superseded rows were not ok); the job tables keep "
                    f"them all")
    return kept.drop(columns=["_key", "_ok"]).sort_index().reset_index(drop=True)


def load(paths: list[str | Path], problems: list[str] | None = None, said: list[str] | None = None) -> pd.DataFrame:
    """The rows of every argument: directories deduplicated, tables taken as they are.
    Files that could not be read are named in ``problems``; ``said`` gets what dedupe did."""
    frames = []
    for p in map(Path, paths):
        if p.is_dir():
            df = dedupe(read_job_records(p, problems), said)
        elif p.is_file():
            df = read_table(p, problems)
        else:
            raise FileNotFoundError(f"{p}: no such directory or table")
        if not df.empty:
            frames.append(df.drop(columns=[c for c in DERIVED if c in df.columns]))
    if not frames:
        raise FileNotFoundError(f"no records.parquet under {', '.join(map(str, paths))}")
    return ordered_columns(pd.concat(frames, ignore_index=True))


# -- derived columns ---------------------------------------------------------
def add_variant(df: pd.DataFrame) -> pd.DataFrame:
    """Every row labelled: a table without labels (written by hand) falls back to the attention name."""
    if "variant" not in df:
        df["variant"] = df["attention"]
    df["variant"] = df["variant"].where(df["variant"].fillna("") != "", df["attention"])
    return df


def baseline_match(df: pd.DataFrame) -> pd.Series:
    """Per row, what pairs it with its baseline's row: the case less the attention, and the device name."""
    return pd.Series([case_key(r, drop=ATTENTION_KEYS) + "\x1f" + str(r.get("device_name", ""))
                      for r in df.to_dict("records")], index=df.index)


def add_speedup(df: pd.DataFrame, column: str, baseline: str) -> pd.DataFrame:
    """``column`` = baseline variant's p50 latency / this row's, on the same case (less the
    attention) and device name; ``<column>_flagged`` where either timing is flagged."""
    match = baseline_match(df)
    ok = df["status"] == "ok"
    flags = flagged_mask(df)
    base = df[(df["variant"] == baseline) & ok]
    base_ms = base.groupby(match[base.index])["latency_ms_p50"].median()
    base_flag = flags[base.index].groupby(match[base.index]).any()
    df[column] = (match.map(base_ms).astype(float) / df["latency_ms_p50"].astype(float)).where(ok, math.nan)
    df[f"{column}_flagged"] = (flags | match.map(base_flag).fillna(False).astype(bool)) & df[column].notna()
    return df


def pick_baseline(df: pd.DataFrame, candidates: list[str]) -> str | None:
    present = set(df["variant"])
    return next((c for c in candidates if c in present), None)


def compulsory_bytes(row) -> float:
    """Bytes one call must move at least, as the row's workload counts them (NaN when it does not)."""
    from .workloads import get_workload

    try:
        return float(get_workload(str(row["workload"])).compulsory_bytes(row, ITEMSIZE.get(row["dtype"], 4)))
    except Exception:  # noqa: BLE001 - a workload this process cannot import
        return math.nan


def add_roofline(df: pd.DataFrame) -> pd.DataFrame:
    peaks = [device_peak(n, d) if dev == "cuda" else (math.nan, math.nan)
             for n, d, dev in zip(df["device_name"], df["dtype"], df["device"])]
    df["peak_tflops"] = [p[0] for p in peaks]
    df["peak_gbps"] = [p[1] for p in peaks]
    df["arith_intensity"] = df["flops_analytic"] / df.apply(compulsory_bytes, axis=1)
    df["roofline_tflops"] = [min(p, ai * bw / 1e3) if p == p else math.nan  # GB/s * flop/B -> TFLOP/s
                             for p, ai, bw in zip(df["peak_tflops"], df["arith_intensity"], df["peak_gbps"])]
    df["frac_of_peak"] = df["tflops_per_s"] / df["peak_tflops"]
    df["frac_of_roofline"] = df["tflops_per_s"] / df["roofline_tflops"]
    return df


def derive(df: pd.DataFrame, baselines: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Add every derived column (see the module docstring)."""
    df = add_variant(df.copy())
    for short, candidates in (baselines or BASELINES).items():
        chosen = pick_baseline(df, candidates)
        df[f"baseline_{short}"] = chosen or ""
        if chosen:
            add_speedup(df, f"speedup_vs_{short}", chosen)
        else:
            df[f"speedup_vs_{short}"] = math.nan
            df[f"speedup_vs_{short}_flagged"] = False
    return add_roofline(df)


def load_tables(path: str | Path) -> pd.DataFrame:
    """Any results location, derived columns recomputed: a table file, or a
    directory holding results.parquet files (all merged), or else job records."""
    p = Path(path)
    if p.is_file():
        return derive(read_table(p))
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such directory or table")
    tables = sorted(p.rglob("results.parquet"))
    return derive(load(tables) if tables else load([p]))


def collect(paths: list[str | Path], out_dir: str | Path | None = None,
            baselines: dict[str, list[str]] | None = None, problems: list[str] | None = None,
            said: list[str] | None = None) -> Path:
    """Merge, derive, write results.parquet and results.csv in ``out_dir``; return the parquet path.
    Every file that could not be read is named in ``problems``; ``said`` gets what dedupe did."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)}: no such directory or table")
    if out_dir is None:
        if len(paths) != 1 or not Path(paths[0]).is_dir():
            raise ValueError("several inputs (or a file): say where the merged table goes with --out DIR")
        out_dir = paths[0]
    df = derive(load(paths, problems, said), baselines)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(lambda p: df.to_parquet(p, index=False), out / "results.parquet")
    atomic_write(lambda p: df.to_csv(p, index=False), out / "results.csv")
    return out / "results.parquet"


def _parse_baselines(items: list[str]) -> dict[str, list[str]]:
    out = {k: list(v) for k, v in BASELINES.items()}
    for item in items:
        short, sep, variant = item.partition("=")
        if not sep or not re.fullmatch(r"\w+", short) or not variant:
            raise ValueError(f"--baseline {item!r} is not valid; valid: NAME=PRESET, e.g. vanilla=vanilla_lepe")
        out[short] = [variant]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = OneLineParser(prog="python -m suite.collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="sweep/run directories or results/records tables")
    ap.add_argument("--out", help="where results.parquet/.csv go (default: the one directory given)")
    ap.add_argument("--baseline", action="append", default=[], metavar="NAME=PRESET",
                    help="speedup_vs_NAME against PRESET (default: vanilla=vanilla_lepe, flash=sdpa_flash)")
    args = ap.parse_args(argv)
    problems: list[str] = []
    said: list[str] = []
    try:
        path = collect(args.paths, args.out, _parse_baselines(args.baseline), problems, said)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for p in problems:
        print(f"could not read: {p}")
    for line in said:
        print(line)
    df = pd.read_parquet(path)
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items())
    print(f"{len(df)} rows ({counts}) from {df['device_name'].nunique()} device(s) -> {path} and "
          f"{path.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
