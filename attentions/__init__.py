"""Attention mechanisms for vision transformers, behind one registry.

The registry imports every attention module of this package the first time it
is asked (``list_attentions``, ``attention_info``, ``create_attention``), so a
new attention is one module here plus ``conf/attention/<name>.yaml``. Nothing
runs at import time. ``attentions`` never imports ``suite``.
"""
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
