"""One name -> one attention class. The registry drives tests, configs and sweeps.

Attentions register themselves with ``@register_attention(name, ...)`` in their
module. Every module of the ``attentions`` package (less the helpers named in
``_HELPERS``) is imported the first time the registry is asked anything, so
adding an attention is one module here and one ``conf/attention/<name>.yaml``:
nothing else lists it. Importing the package imports no attention module.
"""
from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class AttentionInfo:
    """What a user needs to pick an attention: shown in the README table."""

    name: str
    cls: type
    family: str  # exact, linear, hybrid, window, ...
    complexity: str  # in N tokens, e.g. "O(N^2 d)"
    needs: str = "torch"  # packages / hardware beyond torch
    source: str = ""  # paper or library


_REGISTRY: dict[str, AttentionInfo] = {}
# Modules of the package that register no attention (kernels: the fast ELFATT path's launches).
_HELPERS = frozenset({"base", "errors", "functional", "packages", "registry", "kernels"})
_discovered: list[bool] = []


def discover() -> None:
    """Import every attention module of this package once (each registers what it defines)."""
    if _discovered:
        return
    import importlib
    import pkgutil

    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _HELPERS and not module.name.startswith("_"):
            importlib.import_module(f"{__package__}.{module.name}")
    _discovered.append(True)


def register_attention(name: str, *, family: str, complexity: str, needs: str = "torch", source: str = ""):
    """Class decorator: register ``cls`` under ``name`` (once)."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"attention {name!r} is already registered by {_REGISTRY[name].cls.__qualname__}")
        cls.registry_name = name
        _REGISTRY[name] = AttentionInfo(name, cls, family, complexity, needs, source)
        return cls

    return wrap


def list_attentions() -> list[str]:
    """Registered names, sorted."""
    discover()
    return sorted(_REGISTRY)


def attention_info(name: str) -> AttentionInfo:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown attention {name!r}; registered attentions: {', '.join(list_attentions())}"
        ) from None


def attention_options(name: str) -> dict[str, object]:
    """Constructor options beyond (dim, num_heads) with their defaults."""
    sig = inspect.signature(attention_info(name).cls.__init__)
    skip = {"self", "dim", "num_heads"}
    return {
        p.name: (None if p.default is inspect.Parameter.empty else p.default)
        for p in sig.parameters.values()
        if p.name not in skip and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}


def _accepts(kind: type, value) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, Mapping)
    return isinstance(value, kind)


def check_options(name: str, **kwargs) -> None:
    """ValueError naming the first unknown option, or the first value of the wrong type
    (from the constructor's annotations), with the valid choices."""
    valid = attention_options(name)
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise ValueError(
            f"attention {name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(sorted(valid)) or '(none)'}"
        )
    hints = typing.get_type_hints(attention_info(name).cls.__init__)
    for key, value in kwargs.items():
        hint = hints.get(key)
        kinds = [k for k in typing.get_args(hint) or (hint,) if k in _KINDS or k is type(None)]
        if not kinds or any(k is type(None) and value is None or k is not type(None) and _accepts(k, value)
                            for k in kinds):
            continue
        allowed = " or ".join(_KINDS.get(k, "null") for k in kinds)
        raise ValueError(f"attention.{key}={value!r} is not valid for {name!r}; valid: {allowed}")


def create_attention(name: str, dim: int, num_heads: int, **kwargs) -> nn.Module:
    """Build the attention ``name``. Unknown names, unknown options and values of
    the wrong type fail with the valid choices."""
    info = attention_info(name)
    check_options(name, **kwargs)
    return info.cls(dim, num_heads, **kwargs)
