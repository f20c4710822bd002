"""Workloads, registered like attentions: each is one module here (or anywhere
importable, named by its YAML) and one ``conf/workload/<name>.yaml``.
``list_workloads()`` finds the ones shipped here; ``get_workload(name)``
imports a workload's module when it is first asked for."""
from .base import Built, Case, Column, Measured, Workload, WorkloadSettings
from .registry import get_workload, list_workloads, register_workload

__all__ = ["Built", "Case", "Column", "Measured", "Workload", "WorkloadSettings", "get_workload", "list_workloads",
           "register_workload"]
