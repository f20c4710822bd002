"""Workloads: build a module's inputs and the zero-argument callable to time.

- ``op``: q, k, v given as (B, h, N, d); times ``module.attend`` (the core).
- ``layer``: x given as (B, N, C); times ``module(x, hw)`` (qkv, core, proj).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .device import Precision


@dataclass
class Prepared:
    fn: Callable[[], torch.Tensor]  # the timed call (no_grad, autocast when asked)
    inputs: tuple[torch.Tensor, ...]
    flops_analytic: int
    items_per_call: int  # images per call, for throughput


def autocast_context(device: torch.device, precision: Precision):
    if precision.autocast:
        return torch.autocast(device.type, dtype=precision.compute_dtype)
    return contextlib.nullcontext()


def seeded_randn(shape, seed: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Seeded on the CPU so CPU and GPU runs see the same data."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)


def prepare(workload: str, module: nn.Module, *, batch: int, hw: tuple[int, int], device: torch.device,
            precision: Precision, seed: int) -> Prepared:
    """Move ``module`` to the device/precision and build seeded inputs for ``workload``."""
    module.to(device=device, dtype=precision.param_dtype).eval()
    n = hw[0] * hw[1]

    def rand(shape, i):
        return seeded_randn(shape, seed + 1 + i, device, precision.param_dtype)

    if workload == "op":
        shape = (batch, module.num_heads, n, module.head_dim)
        inputs = (rand(shape, 0), rand(shape, 1), rand(shape, 2))

        def call():
            return module.attend(*inputs, hw)
    elif workload == "layer":
        inputs = (rand((batch, n, module.dim), 0),)

        def call():
            return module(inputs[0], hw)
    else:
        raise ValueError(f"unknown workload {workload!r}; valid workloads: op, layer")

    def fn():
        with torch.no_grad(), autocast_context(device, precision):
            return call()

    return Prepared(fn, inputs, module.flops(batch, hw, workload), batch)
