"""Targets judged on measured rows: ``python -m suite.targets TABLE``.

A workload declares its targets (``Workload.targets``: e.g. the op workload's
for ELFATT's fast path, checked on rows of ``python run.py -m
experiment=fast_elfatt``: fp16, the fast path beside torch SDPA pinned to each
backend, forward and forward+backward, eager and CUDA-graph timing). One
verdict per target, device and timing mode: ``met``, ``missed``, or ``owed``
(not measured, with why); a verdict resting on a flagged timing says so.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .args import OneLineParser
from .records import flagged
from .workloads.base import Target


def _label(value) -> str:
    text = str(value)
    return text[:-2] if text.endswith(".0") else text


def judge(rows: pd.DataFrame, t: Target) -> tuple[str, str]:
    """(measured, verdict) of target ``t`` on the rows of one device and timing mode."""
    sub = rows[(rows["direction"] == t.direction) & (rows["resolution"].map(_label) == t.resolution)
               & (rows["dtype"] == t.dtype)]
    fast = sub[sub["variant"] == t.variant]
    if fast.empty:
        return "not measured", "owed"
    f = fast.iloc[0]
    if f["status"] != "ok":
        return f"{f['status']}: {str(f['reason'])[:60]}", "owed"
    shaky = flagged(f.get("timing_quality", ""))
    if t.kind == "max_ms":
        value, ok = f"{f['latency_ms_p50']:.3f} ms", f["latency_ms_p50"] <= t.bound
    elif t.kind == "max_mem_ratio":
        out_mib = f["batch_size"] * f["tokens"] * f["dim"] * 2 / 2**20  # the fp16 output
        ratio = f["peak_extra_mem_mib"] / out_mib
        value, ok, shaky = f"{ratio:.2f}x the output", ratio <= t.bound, False
    else:
        sdpa = sub[sub["variant"].isin(t.against) & (sub["status"] == "ok")]
        if sdpa.empty:
            return f"none of {', '.join(t.against)} ran", "owed"
        best = sdpa.loc[sdpa["latency_ms_p50"].idxmin()]
        ratio = best["latency_ms_p50"] / f["latency_ms_p50"]
        shaky = shaky or flagged(best.get("timing_quality", ""))
        value, ok = f"{ratio:.2f}x ({best['variant']} {best['latency_ms_p50']:.3f} ms)", ratio >= t.bound
    verdict = "met" if ok else "missed"
    return value, verdict + (" (a timing behind it is flagged)" if shaky else "")


def declared(df: pd.DataFrame) -> list[tuple[str, Target]]:
    """(workload, target) for every target the table's workloads declare."""
    from .workloads import get_workload

    out: list = []
    for name in sorted(map(str, df["workload"].unique())) if "workload" in df else []:
        try:
            out += [(name, t) for t in get_workload(name).targets]
        except Exception:  # noqa: BLE001 - a workload this process cannot import has none to judge
            continue
    return out


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per device, timing mode and target whose preset the table holds."""
    out = []
    for name, t in declared(df):
        rows = df[df["workload"] == name]
        if not (rows["variant"] == t.variant).any():
            continue
        if "timing" not in rows:
            rows = rows.assign(timing="eager")
        for (device, timing), g in rows.groupby(["device_name", "timing"], dropna=False):
            measured, verdict = judge(g, t)
            out.append({"device": device, "timing": timing, "target": t.what, "measured": measured,
                        "verdict": verdict})
    return pd.DataFrame(out, columns=["device", "timing", "target", "measured", "verdict"])


def section(df: pd.DataFrame) -> list[str]:
    """The report's Markdown section (empty when no declared target's preset is in the table)."""
    t = table(df) if "variant" in df else pd.DataFrame()
    if t.empty:
        return []
    lines = ["## Targets", "", "Each workload's targets (e.g. ELFATT's fast path against the fastest torch SDPA "
             "backend on the same case), per device and timing mode.", "",
             "| device | timing | target | measured | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {r.device} | {r.timing} | {r.target} | {r.measured} | {r.verdict} |" for r in t.itertuples()]
    return lines + [""]


def main(argv: list[str] | None = None) -> int:
    from .tables import BadInput, read_rows

    ap = OneLineParser(prog="python -m suite.targets", description=__doc__.splitlines()[0])
    ap.add_argument("table", help="a results table or a sweep folder")
    args = ap.parse_args(argv)
    try:
        df = read_rows(Path(args.table), [])
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    lines = section(df)
    if not lines:
        print(f"error: {args.table} holds no rows a declared target judges (e.g. python run.py -m "
              f"experiment=fast_elfatt)", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
