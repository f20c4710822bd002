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
- ``same``: the spreads overlap;
- ``untrusted``: either row's timing is flagged (``timing_quality`` noisy,
  contended or throttled). The case is shown with its flags and its ratio,
  but never counted as slower or faster and never as a regression.

A case whose ``impl_ran`` (the kernel or code path that actually executed)
differs between the sides is marked ``ran differently`` with both paths
(e.g. ``triton -> reference``): its verdict stands (a fallback to a slower
path is a real regression), but the table and figure say the two rows did
not run the same code.

A trusted case is a regression beyond noise when NEW p10 / BASE p90 - 1
exceeds ``--fail-if-slower`` percent; then the command exits 1, so it can
guard performance in CI. Cases present on one side only are listed. Output:
a Markdown table (printed, and ``compare.md``) and a figure (``compare.png``,
ratios on a log axis), written next to NEW (in NEW's folder, or the folder of
the NEW table file) unless ``--out DIR`` says where. A table or argument that
cannot be used is one ``error:`` line and exit code 2.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

from .args import OneLineParser
from .collect import add_variant
from .records import case_key, flagged
from .tables import COMPARE_NEEDS, BadInput, checked, out_folder, read_rows

ENVIRONMENT = ("device_name", "device", "git_sha", "torch_version", "cuda_version", "cudnn_version", "hostname",
               "threads")
COLORS = {"faster": "tab:green", "same": "tab:gray", "slower": "tab:red", "untrusted": "white"}


def case_of(row) -> str:
    """The case a row measures, as BASE and NEW rows are matched (any machine): the suite's one
    case rule (``records.case_key``)."""
    return case_key(row)


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["latency_ms_p50"].notna()].copy()
    ok["_case"] = [case_of(r) for r in ok.to_dict("records")]
    ok["timing_quality"] = ok["timing_quality"].fillna("") if "timing_quality" in ok else ""
    if "timestamp" in ok:
        ok = ok.assign(_t=ok["timestamp"].astype(str)).sort_values("_t", kind="stable").drop(columns="_t")
    return ok.drop_duplicates("_case", keep="last")  # the newest row of a case


def load_side(path: str, problems: list[str]) -> pd.DataFrame:
    """One side's rows, checked: BadInput (one line) names the file or column and what is valid."""
    return add_variant(checked(read_rows(path, problems), str(path), COMPARE_NEEDS))


def beside(new: str | Path) -> Path:
    """Where the outputs go by default: NEW's folder, or the folder of the NEW table file."""
    p = Path(new)
    return p if p.is_dir() else p.parent


def verdict(b, n) -> str:
    if n["latency_ms_p10"] > b["latency_ms_p90"]:
        return "slower"
    if n["latency_ms_p90"] < b["latency_ms_p10"]:
        return "faster"
    return "same"


def compare(base: pd.DataFrame, new: pd.DataFrame, fail_pct: float | None = None) -> tuple[pd.DataFrame, dict]:
    """(one row per matched case, facts: only_base / only_new / regressions / differs). A case with a
    flagged timing on either side is ``untrusted``: shown, never slower, faster or a regression."""
    b, n = _ok_rows(base), _ok_rows(new)
    joined = b.merge(n, on="_case", suffixes=("_base", "_new"))
    rows = [_matched(r) for _, r in joined.iterrows()]
    table = pd.DataFrame(rows, columns=["case", "base_ms", "new_ms", "ratio", "verdict", "slower_beyond_noise_pct",
                                        "base_spread", "new_spread", "flags", "ran"])
    facts = {"only_base": sorted(_label(r) for _, r in b[~b["_case"].isin(n["_case"])].iterrows()),
             "only_new": sorted(_label(r) for _, r in n[~n["_case"].isin(b["_case"])].iterrows()),
             "differs": differences(base, new)}
    table = table.sort_values("case").reset_index(drop=True)
    if fail_pct is not None:
        trusted = table["verdict"] != "untrusted"
        facts["regressions"] = table[trusted & (table["slower_beyond_noise_pct"] > fail_pct)]["case"].tolist()
    return table, facts


def _matched(r: pd.Series) -> dict:
    """One matched case: the ratio, the verdict from both spreads, the flags of either side."""
    bb = {k: float(r[f"{k}_base"]) for k in ("latency_ms_p10", "latency_ms_p50", "latency_ms_p90")}
    nn = {k: float(r[f"{k}_new"]) for k in ("latency_ms_p10", "latency_ms_p50", "latency_ms_p90")}
    flags = "; ".join(f"{side} {r[f'timing_quality_{side}']}" for side in ("base", "new")
                      if flagged(r[f"timing_quality_{side}"]))
    beyond = 100 * (nn["latency_ms_p10"] / bb["latency_ms_p90"] - 1)
    return {"case": _label(r), "base_ms": bb["latency_ms_p50"], "new_ms": nn["latency_ms_p50"],
            "ratio": nn["latency_ms_p50"] / bb["latency_ms_p50"],
            "verdict": "untrusted" if flags else verdict(bb, nn),
            "slower_beyond_noise_pct": max(beyond, 0.0) if not flags else float("nan"),
            "base_spread": (bb["latency_ms_p90"] - bb["latency_ms_p10"]) / bb["latency_ms_p50"],
            "new_spread": (nn["latency_ms_p90"] - nn["latency_ms_p10"]) / nn["latency_ms_p50"], "flags": flags,
            "ran": ran_differently(r.get("impl_ran_base"), r.get("impl_ran_new"))}


def ran_differently(base, new) -> str:
    """``"BASE -> NEW"`` when both sides say what ran and it differs; "" otherwise (a table
    without the column, or a row that did not say, is no difference)."""
    a, b = _spelling(base), _spelling(new)
    return f"{a} -> {b}" if a and b and a != b else ""


def _label(r) -> str:
    get = (lambda k: r.get(f"{k}_base", r.get(k, "")))
    parts = [get("variant") or get("attention"), get("workload"), f"{get('resolution')}px", get("dtype")]
    for extra in ("direction", "timing", "model"):
        v = get(extra)
        if isinstance(v, str) and v and v not in ("fwd", "eager"):
            parts.append(v)
    return " ".join(str(p) for p in parts)


def _spelling(value) -> str:
    """One spelling per value (4, 4.0 and "4" read "4"); missing reads ""."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (int, float)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def differences(base: pd.DataFrame, new: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(column, base values, new values) for the environment columns that differ; a column
    empty on both sides (or missing) is no difference."""
    out = []
    for col in ENVIRONMENT:
        a = sorted({_spelling(v) for v in base.get(col, pd.Series(dtype=object))} - {""})
        b = sorted({_spelling(v) for v in new.get(col, pd.Series(dtype=object))} - {""})
        if a != b:
            out.append((col, ", ".join(a) or "(empty)", ", ".join(b) or "(empty)"))
    return out


def markdown(table: pd.DataFrame, facts: dict) -> str:
    lines = ["| case | base p50 ms | new p50 ms | new / base | verdict | slower beyond noise | timing flags "
             "| ran differently |", "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        beyond = f"{r['slower_beyond_noise_pct']:.0f}%" if r["slower_beyond_noise_pct"] > 0 else ""
        lines.append(f"| {r['case']} | {r['base_ms']:.4g} | {r['new_ms']:.4g} | {r['ratio']:.2f} | {r['verdict']} | "
                     f"{beyond} | {r['flags']} | {r['ran']} |")
    counts = table["verdict"].value_counts()
    lines += ["", f"{len(table)} case(s) in both: " + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in COLORS)
              + ". Untrusted: a timing flagged on either side (noisy, contended or throttled); shown, but never "
                "counted as slower or faster."]
    differ = int((table["ran"] != "").sum())
    if differ:
        lines += ["", f"{differ} case(s) ran a different kernel or path on the two sides (impl_ran, column "
                      "'ran differently'): their ratio compares different code."]
    if facts["differs"]:
        lines += ["", "What differs between the two sides:", "", "| column | base | new |", "|---|---|---|"]
        lines += [f"| {c} | {a} | {b} |" for c, a, b in facts["differs"]]
    for side in ("only_base", "only_new"):
        if facts[side]:
            lines += ["", f"Cases only in {side[5:].upper()}: " + "; ".join(facts[side])]
    return "\n".join(lines)


def figure(table: pd.DataFrame, out: Path) -> Path:
    """``compare.png`` in ``out``."""
    import matplotlib.pyplot as plt

    fig = draw(table)
    path = out / "compare.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def draw(table: pd.DataFrame):
    """Horizontal bars from 1 to NEW / BASE on a log axis (so 0.5x and 2x are as long); untrusted
    cases hatched and labelled with their flags."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .figure_style import times_label

    fig, ax = plt.subplots(figsize=(9, 0.36 * max(4, len(table)) + 1.4))
    y = list(range(len(table)))[::-1]  # the first case at the top
    for yy, (_, r) in zip(y, table.iterrows()):
        untrusted = r["verdict"] == "untrusted"
        ax.barh(yy, r["ratio"] - 1, left=1, color=COLORS[r["verdict"]], edgecolor="dimgray" if untrusted else None,
                hatch="///" if untrusted else None, height=0.7)
        text = (f" {r['ratio']:.2f}x" + (f" ({r['flags']})" if untrusted else "")
                + (f" [ran {r['ran']}]" if r["ran"] else ""))
        ax.annotate(text, (r["ratio"], yy), xytext=(3 if r["ratio"] >= 1 else -3, 0), textcoords="offset points",
                    va="center", ha="left" if r["ratio"] >= 1 else "right", fontsize=7)
    ax.set_xscale("log")  # room for the labels on both sides of the bars
    labelled = (table["flags"] != "").any() or (table["ran"] != "").any()
    ax.set_xlim(min([0.8, *table["ratio"]]) / 2.5, max([1.25, *table["ratio"]]) * (4 if labelled else 2))
    ax.xaxis.set_major_locator(plt.FixedLocator(ratio_ticks(*ax.get_xlim())))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(times_label))
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    ax.axvline(1, color="black", lw=0.8)
    ax.set_yticks(y, table["case"], fontsize=8)
    ax.set_ylim(-0.7, len(table) - 0.3)
    ax.set_xlabel("new p50 / base p50 (log axis; right of 1x: new is slower)")
    fig.suptitle("Run-to-run comparison (colour: verdict with both p10-p90 spreads)")
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="dimgray", hatch="///" if v == "untrusted" else None)
               for v, c in COLORS.items()]
    labels = [v if v != "untrusted" else "untrusted: timing flagged on a side (not judged)" for v in COLORS]
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def ratio_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks between lo and hi; over many decades the decades, 0.5x and 2x, and one tick below 1x."""
    nice = [m * 10.0 ** k for k in range(-6, 7) for m in (1, 2, 5)]
    ticks = [v for v in nice if lo <= v <= hi]
    if len(ticks) > 12:
        below = [v for v in ticks if v < 0.5]
        ticks = [v for v in ticks if v in (0.5, 2.0) or math.log10(v).is_integer()] + below[:1]
    return sorted(set(ticks))


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m suite.compare", description=__doc__.splitlines()[0])
    ap.add_argument("base", help="results table or folder (the reference run)")
    ap.add_argument("new", help="results table or folder (the run to check)")
    ap.add_argument("--fail-if-slower", type=float, metavar="PCT", help="exit 1 when a case is slower by more "
                    "than PCT percent beyond noise (NEW p10 over BASE p90); flagged timings never count")
    ap.add_argument("--out", help="the folder for compare.md and compare.png (default: NEW's folder, or the "
                                  "folder of the NEW table file)")
    args = ap.parse_args(argv)
    problems: list[str] = []
    try:
        base, new = load_side(args.base, problems), load_side(args.new, problems)
        table, facts = compare(base, new, args.fail_if_slower)
        if table.empty:
            raise BadInput(f"no case is in both {args.base} and {args.new} with an ok row; nothing to compare")
        out = out_folder(args.out or beside(args.new))
        text = markdown(table, facts)
        (out / "compare.md").write_text(text + "\n")
        png = figure(table, out)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: could not write compare.md/compare.png ({e.strerror or e}: {e.filename or ''}); give --out "
              f"a writable folder", file=sys.stderr)
        return 2
    for p in problems:
        print(f"warning: could not read {p}", file=sys.stderr)
    print(text, f"\nwritten: {out / 'compare.md'} and {png}", sep="\n")
    regressions = facts.get("regressions") or []
    if regressions:
        print(f"\n{len(regressions)} case(s) slower by more than {args.fail_if_slower:g}% beyond noise: "
              + "; ".join(regressions), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
