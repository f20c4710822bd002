"""Why a case cannot run: the two exceptions every attention raises."""
from __future__ import annotations


class Unsupported(RuntimeError):
    """This attention cannot run this case here (dtype, device, backend...)."""


class Unavailable(Unsupported):
    """An optional package this attention needs is missing or unusable."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
