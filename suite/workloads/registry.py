"""One name -> one workload, as for attentions. ``conf/workload/<name>.yaml`` selects it."""
from __future__ import annotations

from ..config import BadInput
from .base import Workload

_REGISTRY: dict[str, Workload] = {}


def register_workload(cls: type[Workload]) -> type[Workload]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (once)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"workload {cls.name!r} is already registered by {type(_REGISTRY[cls.name]).__qualname__}")
    _REGISTRY[cls.name] = cls()
    return cls


def list_workloads() -> list[str]:
    return sorted(_REGISTRY)


def get_workload(name: str) -> Workload:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInput(f"workload={name!r} is not valid; valid choices: {', '.join(list_workloads())}") from None
