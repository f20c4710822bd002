"""Workloads, registered like attentions: ``op``, ``layer``, ``model``, ``train_proxy``.

Adding a workload means one module here with ``@register_workload`` (imported
below) and one ``conf/workload/<name>.yaml``.
"""
from . import layer, model, op, train_proxy  # noqa: F401  (registration)
from .base import Built, Case, Column, Measured, Workload
from .registry import get_workload, list_workloads, register_workload

__all__ = ["Built", "Case", "Column", "Measured", "Workload", "get_workload", "list_workloads",
           "register_workload"]
