"""The report's figures (PNG + SVG) from a results table.

One figure per device (and per dtype for speedups). Every panel holds one
precision, one direction (forward, backward, forward+backward) and one timing
mode, and its title says which: a line never joins a forward point to a
backward one. Lines are per variant (``figure_style.variant_styles``: colour,
marker and line style, distinguishable for many variants); x ticks are the
measured resolutions. A point timed under poor conditions (``timing_quality``
noisy, contended or throttled) is ringed in red, and so is a speedup whose
baseline row was. Cases that were not measured (oom, skipped, unsupported,
unavailable, invalid, error) are drawn as an ``x`` at the top of the axis in
their line's colour and listed in the report, so a line that stops early says
why instead of silently ending.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import BASELINES
from .figure_style import (FLAG_SPEEDUP_TEXT, FLAG_TEXT, NOT_OK, PAPER_BANDS, ROW_KEYS, Measure,  # noqa: F401
                           case_title, combos, fit_tick_labels, legend_below, plain_log_x, plain_log_y,
                           resolution_figure, ring, ring_handle, ringed, select, speedup_flagged, times_label,
                           variant_styles, with_keys)
from .records import flagged_mask


def slug(text: str) -> str:
    """A file-name-safe, lower-case form of ``text`` (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()[:60]


def device_title(sub: pd.DataFrame) -> str:
    r = sub.iloc[0]
    return f"{r['device_name']} ({r['device']})"


def flash_note(sub: pd.DataFrame) -> str:
    """On CPU the 'flash' SDPA backend is torch's flash_cpu kernel: say so where it matters."""
    kernels = ",".join(sub.loc[sub["variant"] == sub["baseline_flash"].iloc[0], "sdpa_kernels"].fillna("").astype(str))
    if "flash_cpu" in kernels or (sub["device"] == "cpu").all():
        return "; on CPU the flash baseline is torch's flash_cpu kernel, not FlashAttention-2"
    return ""


class Figures:
    """Plots into ``out``; every figure is saved as PNG and SVG."""

    def __init__(self, df: pd.DataFrame, out: Path):
        import matplotlib

        matplotlib.use("Agg")  # files only; chosen here, not at import
        import matplotlib.pyplot as plt
        import seaborn as sns

        self.plt, self.sns = plt, sns
        sns.set_theme(style="whitegrid", context="notebook")
        self.df, self.out = with_keys(df), Path(out)
        self.styles = variant_styles(df["variant"])
        self.flags = {b: speedup_flagged(df, b) for b in BASELINES if f"baseline_{b}" in df}
        self.written: list[tuple[Path, str]] = []  # (png, caption)

    def save(self, fig, name: str, caption: str) -> None:
        fig.tight_layout()
        fit_tick_labels(fig)
        png = self.out / f"{name}.png"
        # One layout pass for both files (bbox_inches="tight" would redo it per file).
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
        fig.savefig(png, dpi=130, bbox_inches=box)
        fig.savefig(self.out / f"{name}.svg", bbox_inches=box)
        self.plt.close(fig)
        self.written.append((png, caption))

    def _grid(self, n_rows: int, n_cols: int, width: float = 5.2, height: float = 3.9):
        return self.plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False)

    # -- figures -------------------------------------------------------------
    def versus_resolution(self, y: str, ylabel: str, name: str, what: str, note: str = "",
                          timing: bool = True) -> None:
        """``y`` over resolution per device; flagged timings ringed (``timing``: y is a timing)."""
        for dev, sub in self.df.groupby("device_name"):
            sub = timed(sub)
            if sub.empty:
                continue
            m = Measure(y, ylabel, flags=None if timing else pd.Series(False, index=sub.index))
            fig = resolution_figure(sub, [m], self.styles, f"{what} vs resolution — {device_title(sub)}")
            self.save(fig, f"{name}__{slug(dev)}",
                      f"{what} vs resolution on {device_title(sub)}, one panel per dtype, direction and workload "
                      f"(log-log){note}.")

    def speedup(self) -> None:
        """Speedup over each baseline per device and dtype, the paper's claim bands shaded; a speedup
        from a flagged timing (the variant's or the baseline's) ringed."""
        for (dev, dt_), sub in self.df.groupby(["device_name", "dtype"]):
            sub = timed(sub)
            bases = [b for b in BASELINES if f"speedup_vs_{b}" in sub and sub[f"speedup_vs_{b}"].notna().any()]
            if sub.empty or not bases:
                continue
            measures = [Measure(f"speedup_vs_{b}", f"speedup over {b} (x, p50)", flags=self.flags[b], band=b,
                                skip=(sub[f"baseline_{b}"].iloc[0],), prefix=f"over {sub[f'baseline_{b}'].iloc[0]}",
                                speedup=True) for b in bases]
            note = flash_note(sub)
            title = f"Speedup vs resolution — {device_title(sub)}, {dt_}" + (f"\n({note[2:]})" if note else "")
            fig = resolution_figure(sub, measures, self.styles, title, flag_text=FLAG_SPEEDUP_TEXT)
            self.save(fig, f"speedup__{slug(dev)}__{dt_}",
                      f"Speedup (baseline p50 / p50; dashed line = baseline) on {device_title(sub)}, {dt_}; "
                      f"shaded: the paper's claimed band (a GPU claim); ringed: computed from a flagged timing{note}.")

    def pareto(self) -> None:
        for dev, sub in self.df.groupby("device_name"):
            for wl, acc, better in _accuracy_choices(sub):
                part = sub[(sub["workload"] == wl) & (sub["status"] == "ok") & sub[acc].notna()
                           & sub["throughput_per_s"].notna()]
                if part.empty:
                    continue
                rows, res = combos(part, ROW_KEYS[:3]), _pick_resolutions(part)
                fig, axes = self._grid(len(rows), len(res), 4.8, 3.9)
                for i, rk in enumerate(rows):
                    for j, r in enumerate(res):
                        pts = select(part, ROW_KEYS[:3], rk)
                        self._pareto_panel(axes[i][j], pts[pts["resolution"] == r], acc, better)
                        ax = axes[i][j]
                        ax.set_title(f"{r} px · " + case_title(*rk[:2], wl, rk[2]), fontsize=10)
                legend_below(fig, axes, self.styles, missing=False)
                fig.suptitle(f"Throughput vs accuracy proxy — {device_title(sub)}", y=1.01)
                self.save(fig, f"pareto__{slug(dev)}__{wl}__{acc}",
                          f"Throughput vs {acc} on {device_title(sub)}, workload {wl}; dotted: Pareto front. "
                          f"rel_err_vs_exact compares with exact softmax attention on the same random weights: "
                          f"for linear/hybrid attentions it measures difference, not error of a trained model.")

    def _pareto_panel(self, ax, pts: pd.DataFrame, acc: str, better: str) -> None:
        for v, g in pts.groupby("variant"):
            st = self.styles[v]
            ax.plot(g["throughput_per_s"], g[acc].clip(lower=1e-12), ls="none", **st.point(), mew=1.5, ms=8,
                    label=v, zorder=4)
        f = flagged_mask(pts).fillna(False).astype(bool).to_numpy()
        ring(ax, pts["throughput_per_s"][f], pts[acc].clip(lower=1e-12)[f])
        front = _frontier(pts, acc, better)
        if len(front) > 1:
            ax.plot(front["throughput_per_s"], front[acc].clip(lower=1e-12), color="grey", lw=1, ls=":", zorder=2)
        ax.set_xscale("log")
        plain_log_x(ax)
        ax.margins(0.12)
        if better == "lower":
            ax.set_yscale("log")
        ax.set_xlabel("throughput (images/s, p50)")
        ax.set_ylabel(f"{acc} ({better} is better)")

    def precision(self) -> None:
        keys = ["device_name", "workload", "direction", "timing", "model"]
        for (dev, wl, direction, timing, model), sub in timed(self.df).groupby(keys):
            if sub["dtype"].nunique() < 2:
                continue
            r = _precision_resolution(sub)
            part = sub[sub["resolution"] == r]
            fig, axes = self.plt.subplots(1, 2, figsize=(max(13, 0.45 * part["variant"].nunique() * 2), 4.6),
                                          squeeze=False)
            dtypes = sorted(part["dtype"].unique())
            pal = dict(zip(dtypes, self.sns.color_palette("Dark2", len(dtypes))))
            for ax, (y, label) in zip(axes[0], [("latency_ms_p50", "p50 latency (ms)"),
                                                 ("rel_err_vs_fp64", "relative error vs float64")]):
                self._precision_panel(ax, part, y, dtypes, pal, ring_flagged=y.startswith("latency"))
                ax.set_ylabel(label)
            handles = [self.plt.Line2D([], [], marker="o", ls="none", color=pal[d], ms=8) for d in dtypes]
            self._legend_keys(fig, axes, handles, [f"dtype {d}" for d in dtypes])
            what = case_title("", direction, wl, timing, model)
            fig.suptitle(f"Precision comparison at {r} px — {device_title(sub)}, {what}", y=1.02)
            suffix = "".join(f"__{slug(x)}" for x in (direction, timing, model) if x not in ("fwd", "eager", ""))
            self.save(fig, f"precision__{slug(dev)}__{wl}{suffix}",
                      f"Latency and error vs float64 per dtype at {r} px on {device_title(sub)}, {what}.")

    def _precision_panel(self, ax, part: pd.DataFrame, y: str, dtypes: list, pal: dict, ring_flagged: bool) -> None:
        order = sorted(part["variant"].unique())
        width = 0.8 / len(dtypes)
        for _, b in part.iterrows():
            k = order.index(b["variant"]) + (dtypes.index(b["dtype"]) - (len(dtypes) - 1) / 2) * width
            if b["status"] == "ok" and b[y] == b[y]:
                ax.plot([k], [max(b[y], 1e-12)], "o", color=pal[b["dtype"]], ms=7, zorder=4)
                if ring_flagged and flagged_mask(part.loc[[b.name]]).iloc[0]:
                    ring(ax, [k], [max(b[y], 1e-12)])
            elif b["status"] != "ok":
                ax.plot([k], [0.97], "x", color=pal[b["dtype"]], ms=7, mew=2, clip_on=False,
                        transform=ax.get_xaxis_transform())
                ax.annotate(NOT_OK.get(b["status"], b["status"]), (k, 0.97), xycoords=ax.get_xaxis_transform(),
                            xytext=(0, 6), textcoords="offset points", fontsize=7, ha="center", rotation=90,
                            color=pal[b["dtype"]])
        if ax.get_lines():
            ax.set_yscale("log")
            if ring_flagged:  # a latency: plain milliseconds
                plain_log_y(ax)
        ax.set_xlim(-0.5, len(order) - 0.5)
        ax.set_xticks(range(len(order)), order, rotation=35, ha="right", fontsize=8)
        ax.grid(axis="x", visible=False)

    def _legend_keys(self, fig, axes, handles: list, labels: list) -> None:
        from matplotlib.lines import Line2D

        if any(line.get_marker() == "x" for ax in np.ravel(axes) for line in ax.get_lines()):
            handles.append(Line2D([], [], color="grey", marker="x", ls="none", ms=8, mew=2))
            labels.append("x at top: not measured in that dtype")
        if ringed(np.ravel(axes)):
            handles.append(ring_handle())
            labels.append(FLAG_TEXT)
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
                   frameon=False, fontsize=9)


def _workload(name: str):
    from .workloads import get_workload

    try:
        return get_workload(str(name))
    except Exception:  # noqa: BLE001 - a row of a workload this process cannot import
        return None


def timed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of workloads whose latency columns time one call (as each workload says: ``timed``)."""
    keep = {w for w in df["workload"].unique() if getattr(_workload(w), "timed", True)}
    return df[df["workload"].isin(keep)]


def _accuracy_choices(sub: pd.DataFrame):
    """(workload, accuracy column, better) pairs that have data, as each workload declares them."""
    for wl in sorted(sub["workload"].unique()):
        for col, better in getattr(_workload(wl), "quality", ()):
            if col in sub and (sub["workload"].eq(wl) & sub[col].notna()).any():
                yield wl, col, better
                break


def _pick_resolutions(part: pd.DataFrame, most: int = 3) -> list[int]:
    counts = part.groupby("resolution")["variant"].nunique()
    res = sorted(counts[counts >= counts.max() / 2].index)
    if len(res) <= most:
        return res
    return [res[0], res[len(res) // 2], res[-1]]


def _precision_resolution(sub: pd.DataFrame) -> int:
    """The largest resolution where the most (variant, dtype) cases ran."""
    counts = sub[sub["status"] == "ok"].groupby("resolution").size()
    if counts.empty:
        return int(sub["resolution"].max())
    return int(counts[counts == counts.max()].index.max())


def _frontier(pts: pd.DataFrame, acc: str, better: str) -> pd.DataFrame:
    """Non-dominated points: no other point is both faster and more accurate."""
    pts = pts.sort_values("throughput_per_s", ascending=False)
    keep, best = [], math.inf if better == "lower" else -math.inf
    for i, r in pts.iterrows():
        if (better == "lower" and r[acc] < best) or (better == "higher" and r[acc] > best):
            keep.append(i)
            best = r[acc]
    return pts.loc[keep].sort_values("throughput_per_s")
