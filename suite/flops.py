"""FLOPs of a zero-argument callable, counted by torch's FlopCounterMode, with
formulas registered for what it does not know (the CPU flash SDPA forward and
backward) or counts wrongly (the backward of a grouped convolution)."""
from __future__ import annotations

import math
from typing import Callable

import torch

Fn = Callable[[], object]


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Flops of the CPU flash SDPA op, which FlopCounterMode does not know:
    QK^T and AV, 2*M*N*K each, over all leading (batch, head, block) dims."""
    lead = math.prod(query_shape[:-2])
    n_q, d = query_shape[-2], query_shape[-1]
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * lead * n_q * n_k * d + 2 * lead * n_q * n_k * d_v


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    """Flops of the CPU flash SDPA backward, which FlopCounterMode does not know:
    as torch counts the CUDA ones, the scores recomputed (QK^T) and four
    matmuls for dP, dV, dQ, dK."""
    lead = math.prod(query_shape[:-2])
    n_q, d = query_shape[-2], query_shape[-1]
    n_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * lead * n_q * n_k * (3 * d + 2 * d_v)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Flops of a convolution's backward: the input gradient and the weight
    gradient each cost the forward's 2 * outputs * (Cin / groups) * kh * kw.
    torch 2.13's own formula ignores ``groups`` here and counts a depthwise
    convolution's backward as a dense one (64x too many at 64 channels)."""
    outputs = math.prod(x_shape if transposed else grad_out_shape)
    per_pass = 2 * outputs * math.prod(w_shape[1:])
    return per_pass * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Fn) -> int:
    """FLOPs seen by FlopCounterMode in one call (formulas registered for the CPU
    flash SDPA forward and backward, which it does not know, and for the
    convolution backward, which it counts wrongly for grouped convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_cpu_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_cpu_backward_flops),
                          ("convolution_backward", _conv_backward_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            mapping[op] = formula
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        fn()
    return int(counter.get_total_flops())


def try_count_flops(fn: Fn) -> tuple[float, str]:
    """``count_flops``, or NaN and a note when the counter cannot trace the
    call (e.g. eager FlexAttention on CPU): a count is an annotation of a
    measurement, never a reason to lose it."""
    try:
        return float(count_flops(fn)), ""
    except Exception as e:  # noqa: BLE001 - the counter's failures come in many types
        # A trace that failed under the counter stays cached by dynamo and
        # would fail every later compiled call in this process (seen with
        # eager FlexAttention on CPU, torch 2.13): drop those caches.
        torch._dynamo.reset()
        text = str(e).strip().splitlines()
        why = f"{type(e).__name__}: {(text[0] if text else '')[:200]}"
        return math.nan, f"flops_counted unavailable: FlopCounterMode failed ({why})"
