"""One sweep at a time per sweep folder: a lock file the launching process holds.

A second sweep on the same folder refuses with one line naming the holder; a
lock left by a process that is gone (same host) is taken over, and says so.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

LOCK = ".sweep.lock"


class SweepLocked(RuntimeError):
    """Another live sweep holds this folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def acquire(sweep_dir: Path) -> tuple[Path, str]:
    """Take the folder's lock: (lock path, a note when a stale lock was taken over). SweepLocked when held."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK
    me = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    note = ""
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == me["host"]
            if same_host and holder.get("pid") and not _alive(int(holder["pid"])):
                path.unlink(missing_ok=True)
                note = f"took over the lock of sweep pid {holder['pid']} (started {holder.get('started')}), which is gone"
                continue
            raise SweepLocked(
                f"another sweep (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                f"{holder.get('started', '?')}) is using {sweep_dir}; wait for it to finish or set another "
                f"hydra.sweep.dir (a lock left by a crash: delete {path})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path, note
    raise SweepLocked(f"could not take the lock {path}")


def release(path: Path | None) -> None:
    if path is None:
        return
    try:
        holder = json.loads(path.read_text() or "{}")
        if holder.get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
