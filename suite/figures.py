"""The report's figures (PNG + SVG, seaborn) from a results table.

One figure per device (and per dtype for speedups); facets name the dtype and
the workload, the title names the device. Cases that were not measured (oom,
skipped, unsupported, unavailable, invalid, error) are drawn as an ``x`` at
the top of the axis in their line's colour and listed in the report, so a
line that stops early says why instead of silently ending.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import BASELINES
from .records import flagged_mask

NOT_OK = {"oom": "OOM", "skipped": "skipped", "unsupported": "unsupported", "unavailable": "unavailable",
          "invalid": "invalid", "error": "error", "interrupted": "interrupted"}
# Claimed bands drawn on the speedup figure (the paper's GPU claims at high resolution).
PAPER_BANDS = {"vanilla": (4.0, 7.0, "paper's claim: 4-7x over vanilla (GLOBAL)", "gold"),
               "flash": (2.0, 3.0, "paper's claim: 2-3x over vanilla with FlashAttention-2", "lightskyblue")}


def times_label(v: float, _pos=None) -> str:
    """A speedup tick: 0.25x, 1.5x, 12x, 1024x (never 1.02e+03x)."""
    if v >= 10:
        return f"{v:,.0f}x"
    return f"{v:.2g}x" if v < 1 else f"{v:.3g}x"
TOKENS_NOTE = "image side (px); tokens N = (side / patch)^2"


def resolution_side(value) -> float:
    """A resolution as one number for an axis: the side of a square image, the
    geometric mean side (sqrt(H*W): the same token count) of ``HxW``."""
    text = str(value).lower()
    if "x" in text:
        h, w = (float(t) for t in text.split("x"))
        return (h * w) ** 0.5
    try:
        return float(text)
    except ValueError:
        return math.nan


def numeric_resolution(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a numeric ``resolution`` (tables keep the "224" / "512x2048" labels)."""
    if "resolution" in df and not pd.api.types.is_numeric_dtype(df["resolution"]):
        df = df.assign(resolution=df["resolution"].map(resolution_side))
    return df


def slug(text: str) -> str:
    """A file-name-safe, lower-case form of ``text`` (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", str(text)).strip("-").lower()[:60]


def device_title(sub: pd.DataFrame) -> str:
    r = sub.iloc[0]
    return f"{r['device_name']} ({r['device']})"


def flash_note(sub: pd.DataFrame) -> str:
    """On CPU the 'flash' SDPA backend is torch's flash_cpu kernel: say so where it matters."""
    kernels = ",".join(sub.loc[sub["variant"] == sub["baseline_flash"].iloc[0], "sdpa_kernels"].fillna(""))
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
        self.df, self.out = numeric_resolution(df), out
        variants = sorted(df["variant"].unique())
        self.colors = dict(zip(variants, sns.color_palette("tab10" if len(variants) <= 10 else "husl",
                                                           len(variants))))
        self.markers = dict(zip(variants, "osD^vP*Xhp<>" * 3))
        self.written: list[tuple[Path, str]] = []  # (png, caption)

    def save(self, fig, name: str, caption: str) -> None:
        png = self.out / f"{name}.png"
        # One layout pass for both files (bbox_inches="tight" would redo it per file).
        box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)
        fig.savefig(png, dpi=130, bbox_inches=box)
        fig.savefig(self.out / f"{name}.svg", bbox_inches=box)
        self.plt.close(fig)
        self.written.append((png, caption))

    # -- shared drawing -----------------------------------------------------
    def _lines(self, ax, sub: pd.DataFrame, y: str, logy: bool = True, skip: tuple = (), ticks=None) -> None:
        """One line per variant over resolution; an x at the top for cases not measured."""
        import matplotlib.transforms as mt

        top = mt.blended_transform_factory(ax.transData, ax.transAxes)
        missing_rank = 0
        for v, g in sub.groupby("variant"):
            if v in skip:
                continue
            ok = g[(g["status"] == "ok") & g[y].notna()].sort_values("resolution")
            if not ok.empty:
                ax.plot(ok["resolution"], ok[y], marker=self.markers[v], color=self.colors[v], label=v, lw=1.6, ms=5)
                flagged = ok[flagged_mask(ok)]
                if not flagged.empty:  # a measurement the suite does not vouch for: ringed in red
                    ax.plot(flagged["resolution"], flagged[y], "o", ms=11, mfc="none", mec="red", mew=1.4, zorder=4)
            bad = g[g["status"] != "ok"].sort_values("resolution")
            if not bad.empty:
                yy = 0.97 - 0.045 * missing_rank
                missing_rank += 1
                ax.plot(bad["resolution"], [yy] * len(bad), "x", color=self.colors[v], ms=8, mew=2,
                        transform=top, clip_on=False, label=None if not ok.empty else v)
                for _, r in bad.drop_duplicates("status").iterrows():
                    ax.annotate(NOT_OK.get(r["status"], r["status"]), (r["resolution"], yy), xycoords=top,
                                xytext=(5, -3), textcoords="offset points", fontsize=7, color=self.colors[v])
        ax.set_xscale("log", base=2)
        if not ((sub["status"] == "ok") & sub[y].notna()).any():
            ax.text(0.5, 0.5, "no case measured here", transform=ax.transAxes, ha="center", color="grey")
            ax.set_yticks([])
        elif logy:
            ax.set_yscale("log")
        res = sorted(ticks if ticks is not None else sub["resolution"].unique())
        ax.set_xlim(res[0] / 1.15, res[-1] * 1.15) if res else None
        ax.set_xticks(res, [str(r) for r in res], rotation=45 if len(res) > 5 else 0)
        ax.xaxis.set_minor_locator(self.plt.NullLocator())  # only the measured resolutions are ticked

    def _legend(self, fig, axes, missing: bool = True) -> None:
        from matplotlib.lines import Line2D

        handles, labels = {}, []
        for ax in np.ravel(axes):
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        labels = sorted(handles)
        hs = [handles[lab] for lab in labels]
        if missing:
            hs.append(Line2D([], [], color="grey", marker="x", ls="none", ms=8, mew=2))
            labels.append("x at top: not measured (label: why)")
        if flagged_mask(self.df).any():
            hs.append(Line2D([], [], marker="o", ls="none", ms=11, mfc="none", mec="red", mew=1.4))
            labels.append("red ring: timing flagged (noisy, contended or throttled; see the report)")
        fig.legend(hs, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
                   frameon=False, fontsize=9)

    def _grid(self, rows: list, cols: list):
        fig, axes = self.plt.subplots(len(rows), len(cols), figsize=(5.2 * len(cols), 3.9 * len(rows)),
                                      squeeze=False)
        return fig, axes

    # -- figures -------------------------------------------------------------
    def versus_resolution(self, y: str, ylabel: str, name: str, what: str, note: str = "") -> None:
        for dev, sub in self.df.groupby("device_name"):
            sub = timed(sub)
            if sub.empty:
                continue
            dtypes, workloads = sorted(sub["dtype"].unique()), sorted(sub["workload"].unique())
            fig, axes = self._grid(dtypes, workloads)
            for i, dt_ in enumerate(dtypes):
                for j, wl in enumerate(workloads):
                    ax = axes[i][j]
                    self._lines(ax, sub[(sub["dtype"] == dt_) & (sub["workload"] == wl)], y,
                                ticks=sub["resolution"].unique())
                    ax.set_title(f"dtype {dt_} · workload {wl} · batch {_batch(sub)}", fontsize=10)
                    ax.set_ylabel(ylabel)
                    ax.set_xlabel(TOKENS_NOTE if i == len(dtypes) - 1 else "")
            fig.suptitle(f"{what} vs resolution — {device_title(sub)}", y=1.01)
            self._legend(fig, axes, missing=bool((sub["status"] != "ok").any()))
            fig.tight_layout()
            self.save(fig, f"{name}__{slug(dev)}",
                      f"{what} vs resolution on {device_title(sub)}, dtypes {', '.join(dtypes)}, "
                      f"workloads {', '.join(workloads)} (log-log){note}.")

    def speedup(self) -> None:
        for (dev, dt_), sub in self.df.groupby(["device_name", "dtype"]):
            sub = timed(sub)
            bases = [b for b in BASELINES if sub[f"baseline_{b}"].iloc[0] if len(sub)]
            bases = [b for b in bases if sub[f"speedup_vs_{b}"].notna().any()]
            if sub.empty or not bases:
                continue
            workloads = sorted(sub["workload"].unique())
            fig, axes = self._grid(bases, workloads)
            for i, b in enumerate(bases):
                base = sub[f"baseline_{b}"].iloc[0]
                for j, wl in enumerate(workloads):
                    ax = axes[i][j]
                    lo, hi, text, color = PAPER_BANDS[b]
                    ax.axhspan(lo, hi, color=color, alpha=0.3, label=text)
                    ax.axhline(1.0, color="black", lw=0.8, ls="--")
                    self._lines(ax, sub[sub["workload"] == wl], f"speedup_vs_{b}", skip=(base,),
                                ticks=sub["resolution"].unique())
                    ax.set_yscale("log", base=2)  # the band keeps the axis positive even with no line
                    ax.yaxis.set_major_formatter(self.plt.FuncFormatter(times_label))
                    ax.yaxis.set_minor_formatter(self.plt.NullFormatter())
                    ax.set_title(f"over {base} · dtype {dt_} · workload {wl}", fontsize=10)
                    ax.set_ylabel(f"speedup over {b} (x, p50)")
                    ax.set_xlabel(TOKENS_NOTE if i == len(bases) - 1 else "")
            note = flash_note(sub)
            fig.suptitle(f"Speedup vs resolution — {device_title(sub)}, {dt_}" + (f"\n({note[2:]})" if note else ""),
                         y=1.03 if note else 1.01)
            self._legend(fig, axes, missing=bool((sub["status"] != "ok").any()))
            fig.tight_layout()
            self.save(fig, f"speedup__{slug(dev)}__{dt_}",
                      f"Speedup (baseline p50 / p50; dashed line = baseline) on {device_title(sub)}, {dt_}; "
                      f"shaded: the paper's claimed band{note}.")

    def pareto(self) -> None:
        for dev, sub in self.df.groupby("device_name"):
            for wl, acc, better in _accuracy_choices(sub):
                part = sub[(sub["workload"] == wl) & (sub["status"] == "ok") & sub[acc].notna()]
                if part.empty:
                    continue
                dtypes = sorted(part["dtype"].unique())
                res = _pick_resolutions(part)
                fig, axes = self.plt.subplots(len(dtypes), len(res), figsize=(4.6 * len(res), 3.8 * len(dtypes)),
                                              squeeze=False)
                for i, dt_ in enumerate(dtypes):
                    for j, r in enumerate(res):
                        ax = axes[i][j]
                        pts = part[(part["dtype"] == dt_) & (part["resolution"] == r)]
                        for v, g in pts.groupby("variant"):
                            ax.scatter(g["throughput_per_s"], g[acc].clip(lower=1e-12), s=55,
                                       color=self.colors[v], marker=self.markers[v], label=v, zorder=3)
                        front = _frontier(pts, acc, better)
                        if len(front) > 1:
                            ax.plot(front["throughput_per_s"], front[acc].clip(lower=1e-12), color="grey",
                                    lw=1, ls=":", zorder=2)
                        ax.set_xscale("log")
                        ax.xaxis.set_major_locator(self.plt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                        ax.xaxis.set_major_formatter(self.plt.FuncFormatter(lambda v, _: f"{v:g}"))
                        ax.margins(0.12)
                        ax.xaxis.set_minor_formatter(self.plt.NullFormatter())
                        if better == "lower":
                            ax.set_yscale("log")
                        ax.set_title(f"{r} px · dtype {dt_} · workload {wl}", fontsize=10)
                        ax.set_xlabel("throughput (images/s, p50)")
                        ax.set_ylabel(f"{acc} ({better} is better)")
                self._legend(fig, axes, missing=False)
                fig.suptitle(f"Throughput vs accuracy proxy — {device_title(sub)}", y=1.01)
                fig.tight_layout()
                self.save(fig, f"pareto__{slug(dev)}__{wl}__{acc}",
                          f"Throughput vs {acc} on {device_title(sub)}, workload {wl}; dotted: Pareto front. "
                          f"rel_err_vs_exact compares with exact softmax attention on the same random weights: "
                          f"for linear/hybrid attentions it measures difference, not error of a trained model.")

    def precision(self) -> None:
        for (dev, wl), sub in timed(self.df).groupby(["device_name", "workload"]):
            if sub["dtype"].nunique() < 2:
                continue
            r = _precision_resolution(sub)
            part = sub[sub["resolution"] == r]
            fig, axes = self.plt.subplots(1, 2, figsize=(13, 4.4), squeeze=False)
            dtypes = sorted(part["dtype"].unique())
            pal = dict(zip(dtypes, self.sns.color_palette("Set2", len(dtypes))))
            order = sorted(part["variant"].unique())
            for ax, (y, label) in zip(axes[0], [("latency_ms_p50", "p50 latency (ms)"),
                                                 ("rel_err_vs_fp64", "relative error vs float64")]):
                ok = part[(part["status"] == "ok") & part[y].notna()]
                if not ok.empty:
                    self.sns.stripplot(data=ok.assign(**{y: ok[y].clip(lower=1e-12)}), x="variant", y=y,
                                       hue="dtype", order=order, hue_order=dtypes, palette=pal, dodge=True,
                                       size=8, jitter=False, ax=ax, marker="o", linewidth=0.5)
                ax.set_yscale("log")
                ax.set_xlim(-0.5, len(order) - 0.5)
                ax.set_ylabel(label)
                ax.set_xlabel("")
                ax.tick_params(axis="x", rotation=35, labelsize=8)
                for lab in ax.get_xticklabels():
                    lab.set_horizontalalignment("right")
                bad = part[part["status"] != "ok"]
                for _, b in bad.iterrows():
                    k = order.index(b["variant"]) + (dtypes.index(b["dtype"]) - (len(dtypes) - 1) / 2) * 0.8 / len(dtypes)
                    ax.plot([k], [0.97], "x", color=pal[b["dtype"]], ms=8, mew=2, clip_on=False,
                            transform=ax.get_xaxis_transform())
                    ax.annotate(NOT_OK.get(b["status"], b["status"]), (k, 0.97), xycoords=ax.get_xaxis_transform(),
                                xytext=(5, -3), textcoords="offset points", fontsize=7, color=pal[b["dtype"]])
                if ax.get_legend():
                    ax.get_legend().set_title("dtype")
            fig.suptitle(f"Precision comparison at {r} px — {device_title(sub)}, workload {wl} "
                         f"(x at top: not measured in that dtype)", y=1.02)
            fig.tight_layout()
            self.save(fig, f"precision__{slug(dev)}__{wl}",
                      f"Latency and error vs float64 per dtype at {r} px on {device_title(sub)}, workload {wl}.")


def timed(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that time a forward call (op, layer, model), not training-proxy rows."""
    if "proxy_task" in df:
        return df[df["proxy_task"].fillna("") == ""]
    return df


def _batch(sub: pd.DataFrame) -> str:
    return ",".join(str(b) for b in sorted(sub["batch_size"].unique()))


def _accuracy_choices(sub: pd.DataFrame):
    """(workload, accuracy column, better) pairs that have data."""
    for wl in ("layer", "op"):
        if ((sub["workload"] == wl) & sub["rel_err_vs_exact"].notna()).any():
            yield wl, "rel_err_vs_exact", "lower"
            break
    for col in ("proxy_top1", "fidelity_top1_agree"):
        if col in sub and sub[col].notna().any():
            wl = sub.loc[sub[col].notna(), "workload"].iloc[0]
            yield wl, col, "higher"


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
