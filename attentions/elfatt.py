"""ELFATT, the reference: the definition in ../shared/ELFATT.md, in plain PyTorch.

Heads 0..g-1 are global (efficient linear attention + LePE over the whole
map); heads g..h-1 are local (softmax attention inside stripes of
``block_rows`` whole rows + LePE inside each stripe). With one head the head
is split by channels: d//2 global, d - d//2 local.

FLOPs: global 4*B*g*N*dg^2; local 4*B*(h-g)*N*L*dl with L = block_rows*W;
LePE 2*9*B*C*N. (Convention in ``attentions/base.py``.)
"""
from __future__ import annotations

import torch

from .base import Attention, dwconv_flops, from_map, lepe_conv, to_map
from .exact import sdpa
from .linear import efficient_attention
from .registry import register_attention

# auto: fast on CUDA when it can run the case, else reference; reference: the
# definition below; fast: the Triton path (attentions/kernels), same function.
ELFATT_IMPLS = ("auto", "reference", "fast")


def divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


def default_block_rows(H: int, target: int = 8) -> int:
    """The divisor of H nearest to ``target``; a tie goes to the larger."""
    return min(divisors(H), key=lambda r: (abs(r - target), -r))


def resolve_block_rows(block_rows: int | None, H: int) -> int:
    if block_rows is None:
        return default_block_rows(H)
    if block_rows < 1 or H % block_rows:
        raise ValueError(f"block_rows={block_rows} does not divide the grid height H={H}; valid block_rows: {divisors(H)}")
    return block_rows


def stripe_lepe(conv: torch.nn.Conv2d, v: torch.Tensor, hw: tuple[int, int], block_rows: int) -> torch.Tensor:
    """LePE applied to each stripe of ``block_rows`` rows separately (zero
    padding at stripe edges, nothing mixes across stripes). (B, h, N, d) -> same."""
    H, W = hw
    b = H // block_rows
    m = to_map(v, hw)  # (B, C, H, W)
    B, C = m.shape[:2]
    m = m.reshape(B, C, b, block_rows, W).transpose(1, 2).reshape(B * b, C, block_rows, W)
    m = conv(m).reshape(B, b, C, block_rows, W).transpose(1, 2).reshape(B, C, H, W)
    return from_map(m, v.shape[1])


def stripe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int], block_rows: int, backend: str = "auto") -> torch.Tensor:
    """Softmax attention (scale 1/sqrt(d)) within stripes of ``block_rows`` rows. (B, h, N, d) -> same."""
    B, h, N, d = q.shape
    b = hw[0] // block_rows
    L = N // b

    def blocks(t):  # raster order: block i is tokens [i*L, (i+1)*L)
        return t.reshape(B, h, b, L, d).reshape(B, h * b, L, d)

    out = sdpa(blocks(q), blocks(k), blocks(v), backend)  # (B, h*b, L, d)
    return out.reshape(B, h, N, d)


@register_attention(
    "elfatt",
    family="hybrid (linear + stripe softmax)",
    complexity="O(N d^2 + N L d), L = block_rows * W",
    needs="torch; impl=fast: triton + CUDA (reference elsewhere)",
    source="Wu et al. 2025, ELFATT (arXiv 2501.06098)",
)
class ElfattAttention(Attention):
    """ELFATT with ``global_heads`` (default heads // 2) and ``block_rows``
    (default: the divisor of H nearest 8). ``impl`` selects the implementation
    of the same function; ``reference`` is the definition."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        global_heads: int | None = None,
        block_rows: int | None = None,
        impl: str = "auto",
    ):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if impl not in ELFATT_IMPLS:
            raise ValueError(f"unknown ELFATT impl {impl!r}; valid impls: {', '.join(ELFATT_IMPLS)}")
        d = self.head_dim
        if num_heads == 1:
            if global_heads is not None:
                raise ValueError(
                    f"global_heads={global_heads} given with heads=1; the single head is split by channels, "
                    "so global_heads must be left unset (null)"
                )
            self.global_heads = None
            self.global_channels = d // 2
        else:
            g = num_heads // 2 if global_heads is None else global_heads
            if not 0 <= g <= num_heads:
                raise ValueError(f"global_heads={global_heads} out of range for heads={num_heads}; valid: 0..{num_heads}")
            self.global_heads = g
            self.global_channels = g * d
        self.block_rows = block_rows
        self.impl = impl
        local_channels = dim - self.global_channels
        self.lepe_global = lepe_conv(self.global_channels) if self.global_channels else None
        self.lepe_local = lepe_conv(local_channels) if local_channels else None

    def float64_reference(self):
        m = super().float64_reference()
        m.impl = "reference"  # the fused kernels run fp16/bf16/fp32 only
        return m

    def check_grid(self, hw):
        resolve_block_rows(self.block_rows, hw[0])

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.global_heads is None:  # one head, split by channels
            return t[..., : self.global_channels], t[..., self.global_channels :]
        return t[:, : self.global_heads], t[:, self.global_heads :]

    def _fast_reasons(self, device, dtype) -> list[str]:
        from .kernels import fast_reasons

        d, gc = self.head_dim, self.global_channels
        widths = (d,) if self.global_heads is not None else (gc, d - gc)
        return fast_reasons(device=device, dtype=dtype, widths=widths)

    def _use_fast(self, q: torch.Tensor) -> bool:
        if self.impl == "auto":  # fast only where it can run; reference otherwise
            from .kernels import triton_missing

            return q.is_cuda and not triton_missing() and not self._fast_reasons(q.device, q.dtype)
        return self.impl == "fast"

    def unsupported_reasons(self, *, device, dtype, hw, batch):
        return self._fast_reasons(device, dtype) if self.impl == "fast" else []

    def run_info(self):
        ran = getattr(self, "_ran", "not run")
        return {"impl_ran": ran, **(getattr(self, "_fast_info", {}) if ran == "fast" else {})}

    def attend(self, q, k, v, hw):
        self._ran = "fast" if self._use_fast(q) else "reference"
        if self._ran == "fast":
            from .kernels import elfatt_attend

            return elfatt_attend(self, q, k, v, hw)
        return self._reference_attend(q, k, v, hw)

    def _reference_attend(self, q, k, v, hw):
        r = resolve_block_rows(self.block_rows, hw[0])
        (qg, ql), (kg, kl), (vg, vl) = self._split(q), self._split(k), self._split(v)
        parts = []
        if self.lepe_global is not None:
            parts.append(efficient_attention(qg, kg, vg) + from_map(self.lepe_global(to_map(vg, hw)), vg.shape[1]))
        if self.lepe_local is not None:
            parts.append(stripe_attention(ql, kl, vl, hw, r) + stripe_lepe(self.lepe_local, vl, hw, r))
        return torch.cat(parts, dim=-1 if self.global_heads is None else 1)

    def core_flops(self, batch, hw):
        n = hw[0] * hw[1]
        r = resolve_block_rows(self.block_rows, hw[0])
        L = r * hw[1]
        if self.global_heads is None:
            dg, dl, g, hl = self.global_channels, self.head_dim - self.global_channels, 1, 1
        else:
            dg = dl = self.head_dim
            g, hl = self.global_heads, self.num_heads - self.global_heads
        glob = 4 * batch * g * n * dg * dg if dg else 0
        local = 4 * batch * hl * n * L * dl if dl else 0
        return glob + local + dwconv_flops(batch, self.dim, hw)
