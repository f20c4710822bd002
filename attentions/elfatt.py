"""ELFATT: the reference definition in plain PyTorch, and the module that
picks between it and the fused Triton path (``attentions/kernels``).

Heads 0..g-1 are global (efficient linear attention + LePE over the whole
map); heads g..h-1 are local (softmax attention inside stripes of
``block_rows`` whole rows + LePE inside each stripe). With one head the head
is split by channels: d//2 global, d - d//2 local. The README's "ELFATT,
exactly" section states the function in full.

FLOPs: global 4*B*g*N*dg^2; local 4*B*(h-g)*N*L*dl with L = block_rows*W;
LePE 2*9*B*C*N. (Convention in ``attentions/base.py``.)
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import Attention, check_impl
from .errors import Reason
from .functional import (
    apply_lepe, divisors, dwconv_flops, efficient_attention, lepe_conv, windowed_attention, windowed_lepe,
)
from .kernels import (
    ElfattSpec, LepeWeights, Tuning, fast_forward, fast_reasons, fused_backward, interpreting, taps_first,
    triton_missing,
)
from .registry import register_attention

# auto: fast on CUDA in fp16/bf16 when it can run the case, else reference;
# reference: the definition below; fast: the Triton path, same function.
ELFATT_IMPLS = ("auto", "reference", "fast")
# dtypes impl=auto sends to the fast path. fp32 runs the kernels' exact
# (ieee) dots on CUDA cores at 255 registers with spills on sm_90: until that
# is measured to win, fp32 stays on the reference.
AUTO_FAST_DTYPES = (torch.float16, torch.bfloat16)


def default_block_rows(H: int, target: int = 8) -> int:
    """The divisor of H nearest to ``target``; a tie goes to the larger."""
    return min(divisors(H), key=lambda r: (abs(r - target), -r))


def resolve_block_rows(block_rows: int | None, H: int) -> int:
    if block_rows is None:
        return default_block_rows(H)
    if isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1 or H % block_rows:
        raise ValueError(f"block_rows={block_rows!r} does not divide the grid height H={H}; "
                         f"valid block_rows: {divisors(H)}")
    return block_rows


def reference_attend(spec: ElfattSpec, lepe_global: nn.Conv2d | None, lepe_local: nn.Conv2d | None,
                     q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The definition: (B, h, N, d) q, k, v -> (B, h, N, d). A stripe of
    ``block_rows`` whole rows is a block_rows x W window."""
    r, W = spec.block_rows, hw[1]
    (qg, ql), (kg, kl), (vg, vl) = spec.split(q), spec.split(k), spec.split(v)
    parts = []
    if lepe_global is not None:
        parts.append(efficient_attention(qg, kg, vg) + apply_lepe(lepe_global, vg, hw))
    if lepe_local is not None:
        parts.append(windowed_attention(ql, kl, vl, hw, r, W) + windowed_lepe(lepe_local, vl, hw, r, W))
    return torch.cat(parts, dim=spec.concat_dim)


class _FastElfatt(torch.autograd.Function):
    """Forward: the Triton path. Backward: the fused Triton backward
    (``tuning.fused_backward``, the default), or else autograd of the reference
    on the saved inputs, under the autocast state the forward ran in."""

    @staticmethod
    def forward(ctx, module, spec, hw, q, k, v, *params):
        ctx.module, ctx.spec, ctx.hw = module, spec, hw
        ctx.autocast = _autocast_state(q.device.type)
        fused = module.tuning.fused_backward
        stats = {} if fused else None
        buf, module.fast_info = fast_forward(spec, module.lepe_weights(), q, k, v, hw, module.tuning, stats)
        ctx.stat_names = sorted(stats) if fused else []
        # The LePE parameters are saved too, so that autograd's version check
        # catches an in-place update between forward and backward.
        ctx.save_for_backward(q, k, v, buf if fused else None, *(stats[n] for n in ctx.stat_names), *params)
        return buf

    @staticmethod
    def backward(ctx, grad_buf):
        q, k, v, buf, *rest = ctx.saved_tensors  # unpacking runs autograd's version check
        needs = ctx.needs_input_grad[3:]
        if buf is not None:
            stats = dict(zip(ctx.stat_names, rest))
            grads = _fused_grads(ctx, q, k, v, buf, stats, grad_buf)
        else:
            grads = _reference_grads(ctx, q, k, v, grad_buf, needs)
        return (None, None, None, *(g if n else None for g, n in zip(grads, needs)))


def _fused_grads(ctx, q, k, v, buf, stats, grad_buf) -> list:
    m = ctx.module
    g = fused_backward(ctx.spec, m.lepe_weights(), q, k, v, buf.permute(0, 2, 1, 3), stats,
                       grad_buf.permute(0, 2, 1, 3), ctx.hw, m.tuning)
    lepe = []
    for conv, dw, db in ((m.lepe_global, g.dw_global, g.dbias_global), (m.lepe_local, g.dw_local, g.dbias_local)):
        if conv is not None:  # taps-first (9, C) back to the conv's (C, 1, 3, 3)
            lepe += [dw.t().reshape(conv.weight.shape).to(conv.weight.dtype), db.to(conv.bias.dtype)]
    return [g.dq, g.dk, g.dv, *lepe]


def _reference_grads(ctx, q, k, v, grad_buf, needs) -> list:
    m = ctx.module
    params = m.lepe_params()  # the module's own tensors: the reference uses these
    device_type, enabled, dtype = ctx.autocast
    with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
        leaves = [t.detach().requires_grad_(n) for t, n in zip((q, k, v), needs[:3])]
        out = reference_attend(ctx.spec, m.lepe_global, m.lepe_local, *leaves, ctx.hw)  # (B, h, N, d)
        wrt = [t for t, n in zip([*leaves, *params], needs) if n]
        grads = iter(torch.autograd.grad(out, wrt, grad_buf.permute(0, 2, 1, 3).to(out.dtype), allow_unused=True))
    return [next(grads) if n else None for n in needs]


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


@register_attention(
    "elfatt",
    family="hybrid (linear + stripe softmax)",
    complexity="O(N d^2 + N L d), L = block_rows * W",
    needs="torch; impl=fast: triton + CUDA (reference elsewhere)",
    source="Wu et al. 2025, ELFATT (arXiv 2501.06098)",
)
class ElfattAttention(Attention):
    """ELFATT with ``global_heads`` (default heads // 2; ``all``: every head) and ``block_rows``
    (default: the divisor of H nearest 8). ``impl`` selects the implementation
    of the same function; ``reference`` is the definition. ``tuning``: the
    fast path's declared knobs (``attentions.kernels.Tuning``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        global_heads: int | str | None = None,
        block_rows: int | None = None,
        impl: str = "auto",
        tuning: dict | None = None,
    ):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        self.impl = check_impl("ELFATT", impl, ELFATT_IMPLS)
        self.tuning = Tuning.from_dict(tuning)
        if block_rows is not None and (isinstance(block_rows, bool) or not isinstance(block_rows, int) or block_rows < 1):
            raise ValueError(f"block_rows={block_rows!r} is invalid; valid: null (nearest divisor of H to 8) "
                             f"or a positive integer dividing the grid height")
        d = self.head_dim
        if global_heads == "all":  # every head global (the paper's all-global baseline), any head count
            global_heads = num_heads
        elif num_heads == 1 and global_heads not in (None, 0):
            raise ValueError(
                f"global_heads={global_heads} given with heads=1; the single head is split by channels, "
                "so global_heads must be left unset (null), 0 (one local head) or 'all' (one global head)"
            )
        if num_heads == 1 and global_heads is None:
            self.global_heads, self.global_channels = None, d // 2
        else:
            g = num_heads // 2 if global_heads is None else global_heads
            if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g <= num_heads:
                raise ValueError(f"global_heads={global_heads!r} out of range for heads={num_heads}; "
                                 f"valid: 0..{num_heads}, 'all' or null (heads // 2)")
            self.global_heads, self.global_channels = g, g * d
        self.block_rows = block_rows
        local_channels = dim - self.global_channels
        self.lepe_global = lepe_conv(self.global_channels) if self.global_channels else None
        self.lepe_local = lepe_conv(local_channels) if local_channels else None
        self.fast_info: dict[str, str] = {}
        self._ran = "not run"

    def spec(self, hw: tuple[int, int]) -> ElfattSpec:
        """The layer on grid ``hw``, as the fast path and the reference see it."""
        return self._spec(resolve_block_rows(self.block_rows, hw[0]))

    def _spec(self, block_rows: int) -> ElfattSpec:
        return ElfattSpec(self.num_heads, self.head_dim, self.global_heads, self.global_channels, block_rows)

    def lepe_weights(self) -> LepeWeights:
        g, loc = self.lepe_global, self.lepe_local
        return LepeWeights(taps_first(g) if g is not None else None, g.bias if g is not None else None,
                           taps_first(loc) if loc is not None else None, loc.bias if loc is not None else None)

    def lepe_params(self) -> list[torch.Tensor]:
        return [p for conv in (self.lepe_global, self.lepe_local) if conv is not None for p in (conv.weight, conv.bias)]

    def float64_reference(self):
        m = super().float64_reference()
        m.impl = "reference"  # the fused kernels run fp16/bf16/fp32 only
        return m

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        try:
            resolve_block_rows(self.block_rows, hw[0])
        except ValueError as e:
            return [Reason("invalid", str(e))]
        if device is None or self.impl != "fast":
            return []
        missing = triton_missing() if torch.device(device).type == "cuda" or interpreting() else ""
        return ([Reason("unavailable", missing)] if missing else []) + [
            Reason("unsupported", r) for r in self._fast_reasons(device, dtype)]

    @classmethod
    def whole_grid_options(cls, hw):
        return {"block_rows": hw[0]}

    def _fast_reasons(self, device, dtype) -> list[str]:
        # the branch widths do not depend on the grid (nor on block_rows)
        return fast_reasons(device=device, dtype=dtype, widths=self._spec(1).widths)

    def _use_fast(self, q: torch.Tensor) -> bool:
        if self.impl == "auto":  # fast only where it can run, and is meant to win; reference otherwise
            if not (q.is_cuda and q.dtype in AUTO_FAST_DTYPES):
                return False
            why = triton_missing() or "; ".join(self._fast_reasons(q.device, q.dtype))
            self._fallback = why  # said in run_info when auto keeps the reference on a GPU
            return not why
        return self.impl == "fast"

    def run_info(self):
        if self._ran != "fast":
            fallback = getattr(self, "_fallback", "")
            return {"impl_ran": self._ran, **({"auto_fallback": fallback} if fallback else {})}
        local = "triton" if self.tuning.local == "triton" else f"triton+sdpa:{self.tuning.sdpa_impl}"
        return {**self.fast_info, "impl_ran": local}

    def attend(self, q, k, v, hw):
        hw = tuple(hw)
        spec = self.spec(hw)
        self._ran = "fast" if self._use_fast(q) else "reference"
        if self._ran == "reference":
            return reference_attend(spec, self.lepe_global, self.lepe_local, q, k, v, hw)
        params = self.lepe_params()
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *params)):
            buf = _FastElfatt.apply(self, spec, hw, q, k, v, *params)
        else:
            buf, self.fast_info = fast_forward(spec, self.lepe_weights(), q, k, v, hw, self.tuning)
        return buf.permute(0, 2, 1, 3)  # (B, h, N, d) view of the (B, N, h, d) buffer

    def score_recompute_flops(self, batch, hw):
        """The stripes' QK^T again: SDPA (reference) and the fused backward both recompute it."""
        spec, n = self.spec(hw), hw[0] * hw[1]
        return 2 * batch * spec.local_count * n * spec.block_rows * hw[1] * spec.widths[-1]

    def core_flops(self, batch, hw):
        spec, n = self.spec(hw), hw[0] * hw[1]
        dg, dl, L = spec.widths[0], spec.widths[-1], spec.block_rows * hw[1]
        glob = 4 * batch * spec.global_count * n * dg * dg
        local = 4 * batch * spec.local_count * n * L * dl
        return glob + local + dwconv_flops(batch, self.dim, hw)
