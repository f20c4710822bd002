"""``layer``: x given as (B, N, C); times ``module(x, hw)``: qkv, core, proj."""
from __future__ import annotations

from .base import inference, seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Layer(SingleAttention):
    name = "layer"

    def inputs(self, module, batch, hw, device, precision, seed):
        return (seeded_randn((batch, hw[0] * hw[1], module.dim), seed + 1, device, precision.param_dtype),)

    def callable(self, module, inputs, hw, device, precision):
        x = inputs[0]
        return inference(lambda: module(x, hw), device, precision)
