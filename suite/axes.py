"""Axes the suite's figures share: speedup and plain-number ticks, the measured
resolutions as x ticks ("512x2048" where an image is not square) whose labels
never collide. Imports matplotlib lazily."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

RES_LABEL = "image side, px (HxW: at sqrt(H*W))"


def _label_text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def times_label(v: float, _pos=None) -> str:
    """A speedup tick: 0.25x, 1.5x, 12x, 1,024x (never 1.02e+03x)."""
    if v >= 10:
        return f"{v:,.0f}x"
    return f"{v:.2g}x" if v < 1 else f"{v:.3g}x"


def plain_label(v: float, _pos=None) -> str:
    """A log-axis tick as a plain number: 0.5, 20, 4000 (not 4 x 10^3)."""
    return f"{v:,.6g}"


def resolution_side(value) -> float:
    """A resolution as one number for an axis: the side of a square image; for ``HxW`` the
    side of the square with as many pixels (sqrt(H*W): the same token count)."""
    text = str(value).strip().lower()
    try:
        if "x" in text:
            h, w = (float(t) for t in text.split("x"))
            return (h * w) ** 0.5
        return float(text)
    except ValueError:
        return math.nan


def numeric_resolution(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a numeric ``resolution`` for the axes and its text in ``resolution_label``
    (tables hold "224" or "512x2048")."""
    if "resolution" not in df:
        return df
    labels = [_label_text(v) for v in df["resolution"]]
    return df.assign(resolution=[resolution_side(v) for v in labels], resolution_label=labels)


def tick_names(df: pd.DataFrame) -> dict[float, str]:
    """Axis position -> the resolutions drawn there ("512x2048" where the image is not square)."""
    if "resolution_label" not in df:
        return {}
    names: dict[float, set] = {}
    for side, label in zip(df["resolution"], df["resolution_label"]):
        if side == side:
            names.setdefault(float(side), set()).add(label)
    return {k: "/".join(sorted(v, key=lambda t: ("x" in t, t))) for k, v in names.items()}


def resolution_axis(ax, resolutions, label: str = RES_LABEL, names: dict | None = None) -> None:
    """Log2 x axis ticked at the measured resolutions only (fit_tick_labels thins colliding labels)."""
    import matplotlib.ticker as mt

    names = names or {}
    res = sorted({float(r) for r in resolutions if r == r})
    ax.set_xscale("log", base=2)
    if res:
        ax.set_xlim(res[0] / 1.15, res[-1] * 1.15)
        ax.set_xticks(res, [names.get(r, f"{r:g}") for r in res])
    ax.xaxis.set_minor_locator(mt.NullLocator())
    if label is not None:
        ax.set_xlabel(label)


def plain_log_y(ax) -> None:
    """Log y with plain-number ticks; ticks at 1, 2, 5 per decade where the axis spans few decades."""
    import matplotlib.ticker as mt

    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
    ax.yaxis.set_major_locator(mt.LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(mt.FuncFormatter(plain_label))
    ax.yaxis.set_minor_formatter(mt.NullFormatter())


def plain_log_x(ax) -> None:
    """Log x (throughput) with plain-number ticks at 1, 2, 5 per decade."""
    import matplotlib.ticker as mt

    ax.xaxis.set_major_locator(mt.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(mt.FuncFormatter(plain_label))
    ax.xaxis.set_minor_formatter(mt.NullFormatter())


def fit_tick_labels(fig, pad_px: float = 4.0) -> None:
    """Hide x tick labels that would overlap their left neighbour (the first and last stay):
    ``5000`` and ``10000`` never print as ``500010000``. Call after the layout is final."""
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text() and t.get_visible()]
        boxes = {id(t): t.get_window_extent(renderer) for t in labels}
        order = sorted(labels, key=lambda t: boxes[id(t)].x0)
        kept = []
        for t in order:
            if kept and boxes[id(t)].x0 < boxes[id(kept[-1])].x1 + pad_px:
                if t is order[-1] and len(kept) > 1:  # keep the last label, drop the one before it
                    kept.pop().set_visible(False)
                else:
                    t.set_visible(False)
                    continue
            kept.append(t)
