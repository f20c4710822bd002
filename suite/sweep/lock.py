"""One sweep at a time per sweep folder: an exclusive ``fcntl.flock`` on
``.sweep.lock`` that the launching process holds for the whole sweep.

The kernel drops the lock when the process ends, however it ends (a crash,
SIGKILL, a reboot), so there is no stale lock to take over and two processes
can never both hold it. The file's content (pid, host, start time) is only
for the message a second sweep prints. On NFS, Linux maps flock onto NFS
byte-range locks (lockd / NFSv4); where the file system refuses locks the
sweep runs unlocked and says so.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

LOCK = ".sweep.lock"


class SweepLocked(RuntimeError):
    """Another live sweep holds this folder."""


@dataclass
class Held:
    path: Path
    fd: int | None  # None: this file system cannot lock


def acquire(sweep_dir: Path) -> tuple[Held, str]:
    """Take the folder's lock: (the handle, a note for the user or ""). SweepLocked when held."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        raise SweepLocked(
            f"another sweep (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}) is using {sweep_dir}; wait for it to finish or set another "
            f"hydra.sweep.dir") from None
    except OSError as e:  # ENOLCK / EOPNOTSUPP
        os.close(fd)
        return Held(path, None), f"{sweep_dir} cannot be locked here ({e.strerror}): nothing stops a second sweep"
    me = {"pid": os.getpid(), "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return Held(path, fd), ""


def release(held: Held | None) -> None:
    """Give the lock back (idempotent)."""
    if held is None or held.fd is None:
        return
    fd, held.fd = held.fd, None
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)
