"""``op``: q, k, v given as (B, h, N, d); times ``module.attend``, the attention core.

Under ``precision=amp`` q, k and v are made in the autocast dtype (fp16 on
CUDA, bf16 on CPU), as the layer's qkv Linear would hand them over under
autocast: every attention gets the same inputs, whether or not its own ops
autocast (SDPA does, a Triton kernel does not).
"""
from __future__ import annotations

from .base import inference, seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Op(SingleAttention):
    name = "op"

    def inputs(self, module, batch, hw, device, precision, seed):
        shape = (batch, module.num_heads, hw[0] * hw[1], module.head_dim)
        dtype = precision.compute_dtype if precision.autocast else precision.param_dtype
        return tuple(seeded_randn(shape, seed + 1 + i, device, dtype) for i in range(3))

    def callable(self, module, inputs, hw, device, precision):
        q, k, v = inputs
        return inference(lambda: module.attend(q, k, v, hw), device, precision)
