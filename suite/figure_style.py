"""What every figure of the suite shares (the report's and the notebooks'):
a style per variant that stays distinguishable for 40 variants, the measured
resolutions as x ticks whose labels never collide, red rings on timings the
suite does not vouch for, and the paper's claim bands with a legend entry.

Imports matplotlib lazily: importing this module draws nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .axes import (  # noqa: F401  (re-exported: the notebooks and figures import them from here)
    RES_LABEL, fit_tick_labels, numeric_resolution, plain_label, plain_log_x, plain_log_y, resolution_axis,
    resolution_side, tick_names, times_label,
)
from .paper import BANDS
from .records import flagged_mask

# The paper's GPU claims at high resolution, drawn on speedup figures: (low, high, legend text, colour).
PAPER_BANDS = BANDS  # the paper's speed claims (suite/paper.py), shaded on speedup figures
DIRECTIONS = {"fwd": "forward", "bwd": "backward", "fwd_bwd": "forward+backward"}
RING = dict(marker="o", ls="none", ms=13, mfc="none", mec="red", mew=1.6)
RING_GID = "flagged-ring"
FLAG_TEXT = "red ring: timing flagged (noisy, contended or throttled; see Flagged timings)"
FLAG_SPEEDUP_TEXT = "red ring: speedup from a flagged timing (this variant's or the baseline's)"
# Ten well-separated qualitative colours (matplotlib's tab10 without its grey, which marks
# "not measured"), then the same colours dashed, dotted... Markers cycle with another period,
# so two variants that share a colour differ in line style and marker.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
          "#000000")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "D", "^", "v", "P", "*", "X", "h", "<", ">", "p", "d")


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    ls: str
    filled: bool = True  # the first ten variants; the next ones have hollow markers

    def line(self) -> dict:
        return dict(color=self.color, ls=self.ls) | self.point()

    def point(self) -> dict:
        return dict(color=self.color, marker=self.marker, mfc=self.color if self.filled else "white")


def variant_styles(variants) -> dict[str, Style]:
    """A (colour, marker, line style, fill) per variant, in sorted order: unique up to 40 variants."""
    names = sorted({str(v) for v in variants})
    n = len(COLORS)
    return {v: Style(COLORS[i % n], MARKERS[i % len(MARKERS)], LINESTYLES[(i // n) % 4], i < n)
            for i, v in enumerate(names)}


def ring(ax, x, y) -> None:
    """Red rings around points drawn from a flagged timing."""
    if len(x):
        ax.plot(list(x), list(y), **RING, zorder=6, gid=RING_GID, label="_flagged")


def ringed(axes) -> bool:
    return any(line.get_gid() == RING_GID for ax in axes for line in ax.get_lines())


def ring_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], **RING)


def claim_band(ax, short: str) -> None:
    """The paper's claimed band for baseline ``short`` (vanilla, flash), with its legend label."""
    if short in PAPER_BANDS:
        lo, hi, text, color = PAPER_BANDS[short]
        ax.axhspan(lo, hi, color=color, alpha=0.35, label=text, zorder=0)


def speedup_flagged(df: pd.DataFrame, short: str) -> pd.Series:
    """Per row: is ``speedup_vs_<short>`` computed from a flagged timing, the row's own or its
    baseline's? Collect writes it (``speedup_vs_<short>_flagged``); older tables get it here by
    collect's own pairing rule (the case less the attention, on the same device name)."""
    from .collect import baseline_match

    col = f"speedup_vs_{short}_flagged"
    if col in df:
        return df[col].fillna(False).astype(bool)
    own = flagged_mask(df).fillna(False).astype(bool)
    base_col = f"baseline_{short}"
    if base_col not in df or not len(df):
        return own
    match = baseline_match(df)
    base = df[(df["variant"] == df[base_col].iloc[0]) & (df["status"] == "ok")]
    base_flag = own[base.index].groupby(match[base.index]).any()
    return own | match.map(base_flag).fillna(False).astype(bool)


TIMED = ("latency_ms", "throughput_per_s", "tflops_per_s", "frac_of", "proxy_steps_per_s", "energy_j", "avg_power_w")


def flags_for(df: pd.DataFrame, column: str) -> pd.Series | None:
    """Which rows' ``column`` comes from a flagged timing: a speedup's from its row or its baseline's,
    a timing's from its row (None: Measure's default), anything else from none."""
    if column.startswith("speedup_vs_"):
        return speedup_flagged(df, column.removeprefix("speedup_vs_"))
    if column.startswith(TIMED):
        return None
    return pd.Series(False, index=df.index)


def case_title(dtype, direction, workload="", timing="eager", model="", batch="", extra: str = "") -> str:
    """A panel title naming what its points share: precision and direction always."""
    parts = [str(dtype), DIRECTIONS.get(str(direction), str(direction)), str(workload)]
    parts += [f"timing {timing}" if timing not in ("", "eager") else "", str(model or ""),
              f"batch {batch}" if batch != "" else "", extra]
    return " · ".join(p for p in parts if p and p != "nan")


# -- lines over resolution: the report's latency, memory and speedup figures, and the notebooks' ----------
NOT_OK = {"oom": "OOM", "skipped": "skipped", "unsupported": "unsupported", "unavailable": "unavailable",
          "invalid": "invalid", "error": "error", "interrupted": "interrupted"}
ROW_KEYS = ("dtype", "direction", "timing", "batch_size")  # one panel row per combination present
COL_KEYS = ("workload", "model", "patch_size", "dim", "heads")


def col_keys(df: pd.DataFrame) -> tuple[str, ...]:
    """COL_KEYS plus the facets the table's workloads declare (``Workload.facets``)."""
    from .workloads import get_workload

    extra: list[str] = []
    for name in sorted(map(str, df["workload"].unique())) if "workload" in df else []:
        try:
            facets = get_workload(name).facets
        except Exception:  # noqa: BLE001 - a workload this process cannot import
            continue
        extra += [f for f in facets if f not in ROW_KEYS + COL_KEYS + tuple(extra)]
    return COL_KEYS + tuple(extra)
KEY_DEFAULTS = {"direction": "fwd", "timing": "eager", "model": ""}
NOT_MEASURED_TEXT = "x at top: not measured (label: why)"


@dataclass
class Measure:
    """What one row of panels plots against resolution."""
    column: str
    label: str
    flags: pd.Series | None = None  # rows drawn with a red ring; None: the row's own timing_quality
    band: str = ""  # a PAPER_BANDS key: the paper's claim shaded, with a legend entry
    skip: tuple = ()  # variants not drawn (a speedup's baseline)
    prefix: str = ""  # panel title prefix ("over vanilla_lepe")
    speedup: bool = False  # log2 axis in "x", a dashed line at 1x
    log: bool = True  # log y (off for a column that can be zero or negative)


def with_keys(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every panel key present as text, one spelling per value (16.0 reads "16",
    missing reads the Record default or ""), so that panels group and select exactly."""
    df = numeric_resolution(df) if "resolution_label" not in df else df.copy()
    for k in ROW_KEYS + col_keys(df):
        values = df[k] if k in df else pd.Series(KEY_DEFAULTS.get(k, ""), index=df.index)
        df[k] = [_text(v, KEY_DEFAULTS.get(k, "")) for v in values]
    return df


def _text(value, default: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        return default
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def combos(sub: pd.DataFrame, keys) -> list[tuple]:
    """The distinct values of ``keys`` in ``sub``, sorted."""
    return sorted({tuple(map(str, r)) for r in sub[list(keys)].itertuples(index=False)},
                  key=lambda t: tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in t))


def select(sub: pd.DataFrame, keys, values) -> pd.DataFrame:
    mask = pd.Series(True, index=sub.index)
    for k, v in zip(keys, values):
        mask &= sub[k] == v
    return sub[mask]


def panel_title(keys: dict, varying: set) -> str:
    """A panel's title from its row and column keys (dtype and direction always named)."""
    extra = " · ".join(f"{k} {keys[k]}" for k in keys if k not in ROW_KEYS + ("workload", "model") and k in varying)
    return case_title(keys["dtype"], keys["direction"], keys["workload"], keys["timing"], keys["model"],
                      keys["batch_size"], extra)


def draw_lines(ax, sub: pd.DataFrame, m: Measure, styles: dict[str, Style]) -> None:
    """One line per variant over resolution (the median where a case has several rows, each row a
    small point); red rings on flagged points; an x at the top for cases not measured."""
    y = m.column
    flags = (flagged_mask(sub) if m.flags is None else m.flags).reindex(sub.index).fillna(False).astype(bool)
    rank = 0
    for v, g in sub.groupby("variant"):
        if v in m.skip:
            continue
        st = styles[v]
        ok = g[(g["status"] == "ok") & g[y].notna()].sort_values("resolution")
        if not ok.empty:
            med = ok.groupby("resolution")[y].median()
            ax.plot(med.index, med.to_numpy(), **st.line(), label=v, lw=1.6, ms=5, zorder=3)
            if ok["resolution"].duplicated().any():
                ax.plot(ok["resolution"], ok[y], ls="none", **st.point(), ms=3.5, alpha=0.6, zorder=3)
            f = flags[ok.index].to_numpy()
            ring(ax, ok["resolution"][f], ok[y][f])
        bad = g[g["status"] != "ok"].sort_values("resolution")
        if not bad.empty:
            not_measured(ax, bad, st.color, rank, label=None if not ok.empty else v)
            rank += 1
    if not ((sub["status"] == "ok") & sub[y].notna()).any():
        ax.text(0.5, 0.5, "no case measured here", transform=ax.transAxes, ha="center", color="grey")
        ax.set_yticks([])


def not_measured(ax, bad: pd.DataFrame, color, rank: int, label) -> None:
    """An x at the top of the axis per case not measured, labelled with its status."""
    import matplotlib.transforms as mt

    top = mt.blended_transform_factory(ax.transData, ax.transAxes)
    yy = 0.97 - 0.05 * rank
    ax.plot(bad["resolution"], [yy] * len(bad), "x", color=color, ms=7, mew=2, transform=top, clip_on=False,
            label=label)
    for _, r in bad.drop_duplicates("status").iterrows():
        ax.annotate(NOT_OK.get(r["status"], r["status"]), (r["resolution"], yy), xycoords=top, xytext=(6, -3),
                    textcoords="offset points", fontsize=7, color=color)


def legend_below(fig, axes, styles: dict, missing: bool, flag_text: str = FLAG_TEXT) -> None:
    """The variants in one legend below the figure; under it, what bands, crosses and rings mean."""
    from matplotlib.lines import Line2D

    axes = list(np.ravel(axes))
    found = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if not lab.startswith("_"):
                found.setdefault(lab, h)
    variants = [v for v in styles if v in found]
    keys = {lab: h for lab, h in found.items() if lab not in styles}
    if missing:
        keys[NOT_MEASURED_TEXT] = Line2D([], [], color="grey", marker="x", ls="none", ms=8, mew=2)
    if ringed(axes):
        keys[flag_text] = ring_handle()
    ncol = max(1, min(len(variants), int(fig.get_figwidth() // 2.1)))
    leg = fig.legend([found[v] for v in variants], variants, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                     ncol=ncol, frameon=False, fontsize=9, title="variant", title_fontsize=9)
    if keys:
        height = leg.get_window_extent(fig.canvas.get_renderer()).height / fig.bbox.height if variants else 0
        fig.legend(list(keys.values()), list(keys), loc="upper center", bbox_to_anchor=(0.5, -height - 0.01),
                   ncol=1 if fig.get_figwidth() < 12 else 2, frameon=False, fontsize=9)


def resolution_figure(df: pd.DataFrame, measures: list[Measure], styles: dict | None = None, title: str = "",
                      flag_text: str = FLAG_TEXT):
    """Lines over resolution, one panel per measure, (dtype, direction, timing, batch) and (workload,
    model...): no line ever mixes directions or precisions. Returns the figure."""
    import matplotlib.pyplot as plt

    df = with_keys(df)
    names = tick_names(df)
    styles = styles or variant_styles(df["variant"])
    ck_names = col_keys(df)
    rows, cols = combos(df, ROW_KEYS), combos(df, ck_names)
    varying = {k for k in ROW_KEYS + ck_names if df[k].nunique(dropna=False) > 1}
    panels = [(m, rk, ck) for m in measures for rk in rows for ck in cols]
    grid = _layout(len(measures), len(rows), len(cols))
    n_rows, n_cols = max(r for r, _ in grid) + 1, max(c for _, c in grid) + 1
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(5.2 * n_cols, 3.9 * n_rows), squeeze=False)
    lowest = {c: max(r for r, cc in grid if cc == c) for c in range(n_cols)}
    for (m, rk, ck), (r, c) in zip(panels, grid):
        ax, cell = axes[r][c], select(select(df, ROW_KEYS, rk), ck_names, ck)
        _panel(ax, cell, m, styles, df["resolution"], last=r == lowest[c], names=names)
        prefix = f"{m.prefix} · " if m.prefix else ""
        ax.set_title(prefix + panel_title(dict(zip(ROW_KEYS + ck_names, rk + ck)), varying), fontsize=10)
    for r, c in set(np.ndindex(n_rows, n_cols)) - set(grid):
        axes[r][c].set_visible(False)
    if title:
        fig.suptitle(title, y=1.0 + 0.02 * title.count("\n") + 0.01)
    shown = [ax for ax in np.ravel(axes) if ax.get_visible()]
    legend_below(fig, shown, styles, missing=bool((df["status"] != "ok").any()), flag_text=flag_text)
    fig.tight_layout()
    fit_tick_labels(fig)
    return fig


def _layout(n_measures: int, n_rows: int, n_cols: int) -> list[tuple[int, int]]:
    """(grid row, grid column) of each panel, in (measure, row key, column key) order. With one column
    key the row keys wrap into up to three columns, so one workload does not make a tall strip."""
    if n_cols > 1 or n_rows == 1:
        return [(m * n_rows + r, c) for m in range(n_measures) for r in range(n_rows) for c in range(n_cols)]
    wrap = n_rows if n_rows <= 3 else 2 if n_rows == 4 else 3
    per_measure = -(-n_rows // wrap)
    return [(m * per_measure + r // wrap, r % wrap) for m in range(n_measures) for r in range(n_rows)]


def _panel(ax, cell: pd.DataFrame, m: Measure, styles: dict, resolutions, last: bool, names=None) -> None:
    import matplotlib.ticker as mt

    if m.band:
        claim_band(ax, m.band)
    if m.speedup:
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
    draw_lines(ax, cell, m, styles)
    resolution_axis(ax, resolutions, RES_LABEL if last else "", names)
    if m.speedup:
        ax.set_yscale("log", base=2)  # the band keeps the axis positive even with no line
        ax.yaxis.set_major_formatter(mt.FuncFormatter(times_label))
        ax.yaxis.set_minor_formatter(mt.NullFormatter())
    elif m.log and ((cell["status"] == "ok") & cell[m.column].notna()).any():
        ax.set_yscale("log")
        plain_log_y(ax)
    ax.set_ylabel(m.label)
