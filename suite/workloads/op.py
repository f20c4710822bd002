"""``op``: q, k, v given as (B, h, N, d); times ``module.attend``, the attention core.

Under ``precision=amp`` q, k and v are made in the autocast dtype (fp16 on
CUDA, bf16 on CPU), as the layer's qkv Linear would hand them over under
autocast: every attention gets the same inputs, whether or not its own ops
autocast (SDPA does, a Triton kernel does not). With ``direction`` bwd or
fwd_bwd the backward computes dq, dk and dv.
"""
from __future__ import annotations

from .. import accuracy as acc
from .base import Target, seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Op(SingleAttention):
    name = "op"
    part = "attend"
    # ELFATT's fast path, judged on rows of experiment=fast_elfatt (targets this suite set, not the paper's)
    targets = (
        Target("3072 px: fast p50 <= 0.6 ms", "3072", "max_ms", 0.6),
        Target("2048 px: >= 3x the fastest SDPA", "2048", "over", 3.0),
        Target("1024 px: no slower than the fastest SDPA", "1024", "over", 1.0),
        Target("224 px, batch 256: within 1.1x of the fastest SDPA", "224", "over", 1 / 1.1),
        Target("3072 px: memory beyond inputs <= 2x the output", "3072", "max_mem_ratio", 2.0),
        Target("fwd+bwd, 3072 px: >= 10x the fastest SDPA", "3072", "over", 10.0, "fwd_bwd"),
        Target("fwd+bwd, 2048 px: >= 3x the fastest SDPA", "2048", "over", 3.0, "fwd_bwd"),
        Target("fwd+bwd, 1024 px: no slower than the fastest SDPA", "1024", "over", 1.0, "fwd_bwd"),
    )

    def inputs(self, module, batch, hw, device, precision, seed):
        shape = (batch, module.num_heads, hw[0] * hw[1], module.head_dim)
        dtype = precision.compute_dtype if precision.autocast else precision.param_dtype
        return tuple(seeded_randn(shape, seed + 1 + i, device, dtype) for i in range(3))

    def compulsory_bytes(self, row, itemsize):
        """Forward: read q, k, v, write the output (4 tensors); backward: read q, k, v, the output
        and its gradient, write dq, dk, dv (8); both: 12."""
        tensors = {"fwd": 4, "bwd": 8, "fwd_bwd": 12}.get(str(row.get("direction", "fwd")), 4)
        return tensors * row["batch_size"] * row["tokens"] * row["dim"] * itemsize

    def forward(self, module, inputs, hw):
        q, k, v = inputs
        return module.attend(q, k, v, hw)

    def leaves(self, module, inputs):
        return list(inputs)

    def grad_names(self, module):
        return ["dq", "dk", "dv"]

    def exact_reference_grads(self, module, first64, go64, hw):
        return acc.grads_of(lambda xs: acc.exact_attention_fp64(*xs), first64, go64)
