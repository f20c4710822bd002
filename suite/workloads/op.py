"""``op``: q, k, v given as (B, h, N, d); times ``module.attend``, the attention core.

Under ``precision=amp`` q, k and v are made in the autocast dtype (fp16 on
CUDA, bf16 on CPU), as the layer's qkv Linear would hand them over under
autocast: every attention gets the same inputs, whether or not its own ops
autocast (SDPA does, a Triton kernel does not). With ``direction`` bwd or
fwd_bwd the backward computes dq, dk and dv.
"""
from __future__ import annotations

from .. import accuracy as acc
from .base import seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Op(SingleAttention):
    name = "op"
    part = "attend"

    def inputs(self, module, batch, hw, device, precision, seed):
        shape = (batch, module.num_heads, hw[0] * hw[1], module.head_dim)
        dtype = precision.compute_dtype if precision.autocast else precision.param_dtype
        return tuple(seeded_randn(shape, seed + 1 + i, device, dtype) for i in range(3))

    def compulsory_bytes(self, row, itemsize):
        """Read q, k and v once, write the output once."""
        return 4 * row["batch_size"] * row["tokens"] * row["dim"] * itemsize

    def forward(self, module, inputs, hw):
        q, k, v = inputs
        return module.attend(q, k, v, hw)

    def leaves(self, module, inputs):
        return list(inputs)

    def grad_names(self, module):
        return ["dq", "dk", "dv"]

    def exact_reference_grads(self, module, first64, go64, hw):
        return acc.grads_of(lambda xs: acc.exact_attention_fp64(*xs), first64, go64)
