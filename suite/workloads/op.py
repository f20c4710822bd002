"""``op``: q, k, v given as (B, h, N, d); times ``module.attend``, the attention core."""
from __future__ import annotations

from .base import inference, seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Op(SingleAttention):
    name = "op"

    def inputs(self, module, batch, hw, device, precision, seed):
        shape = (batch, module.num_heads, hw[0] * hw[1], module.head_dim)
        return tuple(seeded_randn(shape, seed + 1 + i, device, precision.param_dtype) for i in range(3))

    def callable(self, module, inputs, hw, device, precision):
        q, k, v = inputs
        return inference(lambda: module.attend(q, k, v, hw), device, precision)
