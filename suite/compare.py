"""Compare two runs case by case: ``python -m suite.compare BASE NEW [--fail-if-slower PCT] [--out DIR]``.

BASE and NEW are results tables or folders (sweep folders, or folders of
results.parquet files). Rows are matched by case (attention and options,
workload, direction, timing, resolution, batch, patch, width, heads, dtype,
model...), not by machine, so runs from different git shas, devices or torch
versions can be compared; a table says what differs between the two sides.

For each matched case: the latency ratio NEW p50 / BASE p50 and a verdict
that takes both rows' p10-p90 spread into account:

- ``slower``: NEW's p10 is above BASE's p90 (the spreads do not overlap);
- ``faster``: NEW's p90 is below BASE's p10;
- ``same``: the spreads overlap.

A case is a regression beyond noise when NEW p10 / BASE p90 - 1 exceeds
``--fail-if-slower`` percent; then the command exits 1, so it can guard
performance in CI. Cases present on one side only are listed. Output: a
Markdown table (printed, and ``compare.md``) and a figure (``compare.png``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from .collect import TableError, load_tables
from .records import case_key
ENVIRONMENT = ("device_name", "device", "git_sha", "torch_version", "cuda_version", "cudnn_version", "hostname",
               "threads")


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["latency_ms_p50"].notna()].copy()
    ok["_case"] = [case_key(r) for r in ok.to_dict("records")]
    return ok.sort_values("timestamp").drop_duplicates("_case", keep="last")  # the newest row of a case


def verdict(b, n) -> str:
    if n["latency_ms_p10"] > b["latency_ms_p90"]:
        return "slower"
    if n["latency_ms_p90"] < b["latency_ms_p10"]:
        return "faster"
    return "same"


def compare(base: pd.DataFrame, new: pd.DataFrame, fail_pct: float | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per matched case, facts: only_base / only_new / regressions / differs)."""
    b, n = _ok_rows(base), _ok_rows(new)
    joined = b.merge(n, on="_case", suffixes=("_base", "_new"))
    rows = []
    for _, r in joined.iterrows():
        bb = {k: r[f"{k}_base"] for k in ("latency_ms_p10", "latency_ms_p50", "latency_ms_p90")}
        nn = {k: r[f"{k}_new"] for k in ("latency_ms_p10", "latency_ms_p50", "latency_ms_p90")}
        beyond = nn["latency_ms_p10"] / bb["latency_ms_p90"] - 1
        rows.append({"case": _label(r), "base_ms": bb["latency_ms_p50"], "new_ms": nn["latency_ms_p50"],
                     "ratio": nn["latency_ms_p50"] / bb["latency_ms_p50"], "verdict": verdict(bb, nn),
                     "slower_beyond_noise_pct": 100 * beyond if beyond > 0 else 0.0,
                     "base_spread": (bb["latency_ms_p90"] - bb["latency_ms_p10"]) / bb["latency_ms_p50"],
                     "new_spread": (nn["latency_ms_p90"] - nn["latency_ms_p10"]) / nn["latency_ms_p50"]})
    table = pd.DataFrame(rows, columns=["case", "base_ms", "new_ms", "ratio", "verdict", "slower_beyond_noise_pct",
                                        "base_spread", "new_spread"])
    facts = {"only_base": sorted(_label(r) for _, r in b[~b["_case"].isin(n["_case"])].iterrows()),
             "only_new": sorted(_label(r) for _, r in n[~n["_case"].isin(b["_case"])].iterrows()),
             "differs": differences(base, new)}
    if fail_pct is not None:
        facts["regressions"] = table[table["slower_beyond_noise_pct"] > fail_pct]["case"].tolist()
    return table.sort_values("case").reset_index(drop=True), facts


def _label(r) -> str:
    get = (lambda k: r.get(f"{k}_base", r.get(k, "")))
    parts = [get("variant") or get("attention"), get("workload"), f"{get('resolution')}px", get("dtype")]
    for extra in ("direction", "timing", "model"):
        v = get(extra)
        if isinstance(v, str) and v and v not in ("fwd", "eager"):
            parts.append(v)
    return " ".join(str(p) for p in parts)


def differences(base: pd.DataFrame, new: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, base values, new values) for the environment columns that differ."""
    out = []
    for col in ENVIRONMENT:
        if col in base and col in new:
            a, b = sorted(map(str, base[col].dropna().unique())), sorted(map(str, new[col].dropna().unique()))
            if a != b:
                out.append((col, ", ".join(a), ", ".join(b)))
    return out


def markdown(table: pd.DataFrame, facts: dict) -> str:
    lines = ["| case | base p50 ms | new p50 ms | new / base | verdict | slower beyond noise |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        beyond = f"{r['slower_beyond_noise_pct']:.0f}%" if r["slower_beyond_noise_pct"] > 0 else ""
        lines.append(f"| {r['case']} | {r['base_ms']:.4g} | {r['new_ms']:.4g} | {r['ratio']:.2f} | {r['verdict']} | "
                     f"{beyond} |")
    if facts["differs"]:
        lines += ["", "What differs between the two sides:", "", "| column | base | new |", "|---|---|---|"]
        lines += [f"| {c} | {a} | {b} |" for c, a, b in facts["differs"]]
    for side in ("only_base", "only_new"):
        if facts[side]:
            lines += ["", f"Cases only in {side[5:].upper()}: " + "; ".join(facts[side])]
    return "\n".join(lines)


def figure(table: pd.DataFrame, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"faster": "tab:green", "same": "tab:gray", "slower": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(4, len(table)) + 1))
    y = range(len(table))
    ax.barh(list(y), table["ratio"] - 1, left=1, color=[colors[v] for v in table["verdict"]])
    ax.axvline(1, color="black", lw=0.8)
    ax.set_yticks(list(y), table["case"], fontsize=8)
    ax.set_xlabel("new p50 / base p50 (right of 1: slower)")
    ax.set_title("Run-to-run comparison (colour: verdict with both p10-p90 spreads)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    ax.legend(handles, list(colors), loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / "compare.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m suite.compare", description=__doc__.splitlines()[0])
    ap.add_argument("base", help="results table or folder (the reference run)")
    ap.add_argument("new", help="results table or folder (the run to check)")
    ap.add_argument("--fail-if-slower", type=float, metavar="PCT", help="exit 1 when a case is slower by more "
                    "than PCT percent beyond noise (NEW p10 over BASE p90)")
    ap.add_argument("--out", default=".", help="where compare.md and compare.png go (default: here)")
    args = ap.parse_args(argv)
    try:
        base, new = load_tables(args.base), load_tables(args.new)
    except (FileNotFoundError, TableError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table, facts = compare(base, new, args.fail_if_slower)
    if table.empty:
        print(f"error: no case is in both {args.base} and {args.new} with an ok row", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(table, facts)
    (out / "compare.md").write_text(text + "\n")
    print(text, f"\nfigure: {figure(table, out)}", sep="\n")
    regressions = facts.get("regressions") or []
    if regressions:
        print(f"\n{len(regressions)} case(s) slower by more than {args.fail_if_slower:g}% beyond noise: "
              + "; ".join(regressions), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
