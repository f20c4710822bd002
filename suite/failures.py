"""What went wrong with a case, as a (status, reason) pair for its row."""
from __future__ import annotations

import traceback
from pathlib import Path

import torch

import attentions


def is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def failure(e: BaseException, run_dir: Path) -> tuple[str, str]:
    """(status, reason) of an exception raised while measuring a case. An
    unexpected error keeps its traceback in ``run_dir/error.log``."""
    if isinstance(e, attentions.Unavailable):
        return "unavailable", str(e)
    if isinstance(e, attentions.Unsupported):
        return "unsupported", str(e)
    if is_oom(e):
        return "oom", first_line(e)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.log").write_text(traceback.format_exc())
    return "error", f"{first_line(e)} (traceback in {run_dir / 'error.log'})"
