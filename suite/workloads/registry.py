"""One name -> one workload, as for attentions. ``conf/workload/<name>.yaml`` selects it.

A workload registers itself (``@register_workload``) when its module is
imported. The module is ``suite.workloads.<name>`` unless the YAML names
another (``module: my_package.my_workload``): adding a workload is one module
and one YAML, nothing else. Modules are imported when first asked for.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..config import BadInput
from .base import Workload

_REGISTRY: dict[str, Workload] = {}
_HELPERS = ("base", "registry")  # modules of this package that hold no workload


def register_workload(cls: type[Workload]) -> type[Workload]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (once)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and type(_REGISTRY[cls.name]) is not cls:
        raise ValueError(f"workload {cls.name!r} is already registered by {type(_REGISTRY[cls.name]).__qualname__}")
    _REGISTRY[cls.name] = cls()
    return cls


def discover() -> None:
    """Import every module of this package, registering the workloads shipped with the suite."""
    for info in pkgutil.iter_modules(importlib.import_module(__package__).__path__):
        if info.name not in _HELPERS:
            importlib.import_module(f"{__package__}.{info.name}")


def list_workloads() -> list[str]:
    """Every workload shipped with the suite, and any other registered in this process."""
    discover()
    return sorted(_REGISTRY)


def get_workload(name: str, module: str = "") -> Workload:
    """The workload ``name``, importing its module first when needed; BadInput naming the valid ones."""
    if name not in _REGISTRY:
        target = module or f"{__package__}.{name}"
        try:
            importlib.import_module(target)
        except ModuleNotFoundError as e:
            if module and e.name and module.startswith(e.name):
                raise BadInput(f"workload={name}: its module {module!r} cannot be imported ({e})") from None
        except Exception as e:  # noqa: BLE001 - a plugin that fails on import: one line, not a traceback
            raise BadInput(f"workload={name}: importing {target} failed ({type(e).__name__}: {e})") from None
    if name not in _REGISTRY:
        raise BadInput(f"workload={name!r} is not valid; valid choices: {', '.join(list_workloads())}")
    return _REGISTRY[name]
