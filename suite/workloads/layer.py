"""``layer``: x given as (B, N, C); times ``module(x, hw)``: qkv, core, proj.
With ``direction`` bwd or fwd_bwd the backward computes the gradients of x
and of every weight."""
from __future__ import annotations

from .. import accuracy as acc
from .base import seeded_randn
from .registry import register_workload
from .single import SingleAttention


@register_workload
class Layer(SingleAttention):
    name = "layer"
    part = "full"

    def inputs(self, module, batch, hw, device, precision, seed):
        return (seeded_randn((batch, hw[0] * hw[1], module.dim), seed + 1, device, precision.param_dtype),)

    def compulsory_bytes(self, row, itemsize):
        """Forward: read x and the qkv / proj weights, write the output; backward: read x, the
        output's gradient and the weights, write dx and the weights' gradients; both: the sum."""
        c = row["dim"]
        bnc, w = row["batch_size"] * row["tokens"] * c, 4 * c * c + 4 * c
        fwd, bwd = 2 * bnc + w, 3 * bnc + 2 * w
        return {"fwd": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}.get(str(row.get("direction", "fwd")), fwd) * itemsize

    def forward(self, module, inputs, hw):
        return module(inputs[0], hw)

    def leaves(self, module, inputs):
        return [inputs[0], *module.parameters()]

    def grad_names(self, module):
        return ["dx", *(f"d{name}" for name, _ in module.named_parameters())]

    def exact_reference_grads(self, module, first64, go64, hw):
        """Exact attention with the layer's qkv and proj weights, differentiated in
        float64 with respect to x and those weights (None for the layer's other weights)."""
        params = dict(module.named_parameters())
        shared = [params[n].detach().double() if params.get(n) is not None else None for n in acc.EXACT_WEIGHTS]
        leaves = [first64[0]] + [t for t in shared if t is not None]

        def exact(xs):
            it = iter(xs[1:])
            w = {n: next(it) if t is not None else None for n, t in zip(acc.EXACT_WEIGHTS, shared)}
            return acc.exact_layer_weights_fp64(xs[0], hw, module.num_heads, w)

        grads = iter(acc.grads_of(exact, leaves, go64))
        by_name = {"dx": next(grads)}
        by_name.update({f"d{n}": next(grads) for n, t in zip(acc.EXACT_WEIGHTS, shared) if t is not None})
        return [by_name.get(n) for n in self.grad_names(module)]
