"""Why a case cannot run: the exceptions every attention raises, and the kinds of
answer ``Attention.reasons`` gives before anything runs."""
from __future__ import annotations

from dataclasses import dataclass

REASON_KINDS = ("invalid", "unavailable", "unsupported")


class Unsupported(RuntimeError):
    """This attention cannot run this case here (dtype, device, backend...)."""


class Unavailable(Unsupported):
    """An optional package this attention needs is missing or unusable."""


@dataclass(frozen=True)
class Reason:
    """Why a case cannot run. ``invalid``: an option cannot work on this grid (a
    setting to change); ``unavailable``: a package is missing or unusable here;
    ``unsupported``: this device, dtype or size is beyond the implementation."""

    kind: str
    text: str

    def __post_init__(self):
        if self.kind not in REASON_KINDS:
            raise ValueError(f"reason kind {self.kind!r} not in {REASON_KINDS}")


def failure_kind(e: BaseException) -> str | None:
    """``unavailable`` or ``unsupported`` for the exceptions above, None for any other:
    how a caller that must not depend on these classes tells them apart."""
    if isinstance(e, Unavailable):
        return "unavailable"
    if isinstance(e, Unsupported):
        return "unsupported"
    return None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
