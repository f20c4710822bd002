"""What a single run is doing right now, on one line of stderr that rewrites
itself (warmup, timing attempt 2 of 3, FLOP count, float64 reference...).

Shown only when stderr is a terminal and only for a single run (a sweep has
its own progress display); a file or a pipe gets nothing, so logs stay clean.
``clear()`` erases the line before the summary prints.
"""
from __future__ import annotations

import sys
import time

WIDTH = 79
_state = {"on": False, "label": "", "shown": False, "t0": 0.0}


def enable(label: str) -> None:
    """Start showing progress for one run (``label``: what is measured), if stderr is a terminal."""
    _state.update(on=sys.stderr.isatty(), label=label, shown=False, t0=time.perf_counter())


def say(what: str) -> None:
    """Replace the progress line with ``what`` (nothing when disabled)."""
    if not _state["on"]:
        return
    took = time.perf_counter() - _state["t0"]
    line = f"{_state['label']}: {what} ({took:.0f} s)"
    if len(line) > WIDTH:
        line = line[: WIDTH - 1] + "\u2026"
    try:
        sys.stderr.write("\r\x1b[2K" + line)
        sys.stderr.flush()
        _state["shown"] = True
    except OSError:
        _state["on"] = False


def clear() -> None:
    """Erase the progress line and stop showing progress."""
    if _state["shown"]:
        try:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
        except OSError:
            pass
    _state.update(on=False, shown=False)
