"""Attention mechanisms for vision transformers, behind one registry.

Importing this package registers every attention (explicit imports below);
nothing else happens at import time. ``attentions`` never imports ``suite``.
"""
from . import elfatt, exact, linear, optional, window  # noqa: F401  (registration)
from .base import Attention
from .errors import REASON_KINDS, Reason, Unavailable, Unsupported, failure_kind
from .registry import (
    AttentionInfo,
    attention_info,
    attention_options,
    create_attention,
    list_attentions,
    register_attention,
)

__all__ = [
    "Attention",
    "AttentionInfo",
    "REASON_KINDS",
    "Reason",
    "Unavailable",
    "Unsupported",
    "attention_info",
    "attention_options",
    "create_attention",
    "failure_kind",
    "list_attentions",
    "register_attention",
]
