"""Local softmax attentions: Swin windows, CSWin cross-shaped stripes, neighborhoods.

All three are softmax(QK^T / sqrt(d))V restricted to a token-dependent set of
keys; the tests compare each one with dense masked attention in float64.
None carries a relative position bias (Swin's table, NAT's rpb): this suite
compares attention cores, and a bias table is the same O(N w^2) add for all.

FLOPs (convention in ``attentions/base.py``; B batch, h heads, d head width):
- ``swin``: 4*B*h*Np*w^2*d with Np = Hp*Wp, the grid padded up to multiples
  of the window w. Padded tokens and masked pairs are counted because the
  dense per-window matmuls compute them.
- ``cswin``: 4*B*hv*N*(H*s)*dv + 4*B*hh*N*(s*W)*dh (vertical / horizontal
  head groups, stripe width s) + LePE 2*9*B*C*N (the conv runs per stripe but
  still produces each output element once).
- ``neighborhood``: 4*B*h*N*k^2*d, the useful work. The executed work is
  larger: FlexAttention computes whole 128x128 blocks that are only partly
  inside a neighborhood, and ``impl=mask`` computes all N^2 pairs.
``FlopCounterMode`` sees nothing inside torch's fused CPU SDPA kernel; under
the SDPA math backend it counts the matmuls and agrees exactly with ``swin``
and ``cswin`` (tests/attentions/test_window.py).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .base import Attention, check_impl
from .errors import Reason, Unavailable, Unsupported, first_line
from .functional import (
    compiled_cpu_flex_problem, divisors, dwconv_flops, flex_attend, lepe_conv, window_partition, windowed_attention,
    windowed_lepe,
)
from .packages import import_problem, package_version
from .registry import register_attention


# -- swin ----------------------------------------------------------------------
def swin_window_shift(hw: tuple[int, int], window: int, shift: bool) -> tuple[int, int]:
    """Swin's rule: a grid no larger than the window (min(H, W) <= window) is
    one window of size min(H, W) and is not shifted. Returns (window, shift)."""
    if min(hw) <= window:
        return min(hw), 0
    return window, window // 2 if shift else 0


def swin_mask(hw: tuple[int, int], window: int, shift: int, device=None) -> torch.Tensor | None:
    """Boolean mask (nW, L, L), True = may attend, for the padded, rolled grid; None if not needed.

    Shift: Swin's three regions per axis (slices [0,-w), [-w,-s), [-s,end) of
    the rolled grid); tokens from different regions never attend to each other.
    Padding: padded keys are masked out, so each real query sees exactly the
    real tokens of its window/region. Padded queries keep their region (their
    rows are never empty, so no NaN reaches the backward); they are cropped.
    """
    H, W = hw
    Hp, Wp = -(-H // window) * window, -(-W // window) * window
    if shift == 0 and (Hp, Wp) == (H, W):
        return None

    def region(n):  # region id along one axis of the rolled, padded grid
        lab = torch.zeros(n, dtype=torch.long, device=device)
        if shift:
            lab[n - window : n - shift] = 1
            lab[n - shift :] = 2
        return lab

    def real(n, size):  # rolled position p holds padded position (p + shift) % n
        return (torch.arange(n, device=device) + shift) % n < size

    reg = region(Hp)[:, None] * 3 + region(Wp)[None, :]
    ok = real(Hp, H)[:, None] & real(Wp, W)[None, :]
    reg = window_partition(reg[None, :, :, None], window, window)[0, :, :, 0]  # (nW, L)
    ok = window_partition(ok[None, :, :, None], window, window)[0, :, :, 0]
    return (reg[:, :, None] == reg[:, None, :]) & (ok[:, None, :] | ~ok[:, :, None])


@register_attention(
    "swin",
    family="window",
    complexity="O(N w^2 d)",
    source="Liu et al. 2021, Swin Transformer (W-MSA / SW-MSA, no relative position bias)",
)
class SwinAttention(Attention):
    """Swin (shifted) window attention on w x w windows, w = ``window``.

    ``shift=True`` rolls the grid by w//2 and masks pairs that come from
    different regions, as SW-MSA does. A grid the window does not divide is
    padded bottom/right to multiples of w and cropped back. Swin pads x
    *before* qkv, so its padded keys equal the qkv bias and take part in the
    softmax; this module only sees q, k, v, so it pads them with zeros and
    masks the padded keys out instead: every real query attends exactly to
    the real tokens of its window (and region). Like Swin, a grid with
    min(H, W) <= window becomes one unshifted window of size min(H, W).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, window: int = 7, shift: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"window={window!r} is invalid; valid windows: integers >= 1")
        self.window = window
        self.shift = bool(shift)
        self._last: tuple[int, int] | None = None
        self._masks: dict[tuple, torch.Tensor | None] = {}

    def core(self, q, k, v, hw):
        H, W = hw
        w, s = swin_window_shift(hw, self.window, self.shift)
        self._last = (w, s)
        key = (hw, w, s, q.device)
        if key not in self._masks:
            self._masks[key] = swin_mask(hw, w, s, q.device)
        B, h, N, d = q.shape
        Hp, Wp = -(-H // w) * w, -(-W // w) * w

        def prep(t):  # (B, h, N, d) -> padded, rolled (B, h, Hp*Wp, d)
            t = F.pad(t.reshape(B * h, H, W, d), (0, 0, 0, Wp - W, 0, Hp - H))
            if s:
                t = torch.roll(t, shifts=(-s, -s), dims=(1, 2))
            return t.reshape(B, h, Hp * Wp, d)

        out = windowed_attention(prep(q), prep(k), prep(v), (Hp, Wp), w, w, self._masks[key])
        out = out.reshape(B * h, Hp, Wp, d)
        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        return out[:, :H, :W].reshape(B, h, N, d)

    def run_info(self):
        if self._last is None:
            return {"impl_ran": "torch"}
        return {"impl_ran": "torch", "window_effective": str(self._last[0]), "shift_effective": str(self._last[1])}

    @classmethod
    def whole_grid_options(cls, hw):
        return {"window": hw[0]} if hw[0] == hw[1] else {}

    def core_transient_elements(self, batch, hw):
        w, _ = swin_window_shift(hw, self.window, self.shift)
        n_padded = -(-hw[0] // w) * w * (-(-hw[1] // w) * w)
        return 4 * batch * self.dim * n_padded  # padded, windowed copies of q, k, v and the output

    def core_flops(self, batch, hw):
        w, _ = swin_window_shift(hw, self.window, self.shift)
        n_padded = -(-hw[0] // w) * w * (-(-hw[1] // w) * w)
        return 4 * batch * self.num_heads * n_padded * w * w * self.head_dim

    def score_recompute_flops(self, batch, hw):
        return self.core_flops(batch, hw) // 2  # SDPA's fused backward: the windows' QK^T again


# -- cswin ---------------------------------------------------------------------
@register_attention(
    "cswin",
    family="window",
    complexity="O(N s (H+W) d)",
    source="Dong et al. 2022, CSWin Transformer (cross-shaped windows + LePE)",
)
class CSWinAttention(Attention):
    """Cross-shaped window attention with LePE, stripe width s = ``stripe``.

    The first heads // 2 heads attend inside vertical stripes (s columns, full
    height), the others inside horizontal stripes (s rows, full width); that
    is the order of CSWin's code (branch idx 0 is H_sp = H, W_sp = s), the
    paper's text names horizontal first - the same function up to a head
    permutation. Each group adds LePE, a depthwise 3x3 conv on v applied to
    each stripe separately, as CSWin's get_lepe. With one head (CSWin's
    two-branch layer would have zero heads per branch) the head is split by
    channels as ELFATT does: d//2 vertical, d - d//2 horizontal, each scaled
    by its own width. s = H = W gives full attention + LePE, CSWin's last
    stage. CSWin cannot pad: s must divide both H and W (``reasons``).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, stripe: int = 7):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if not isinstance(stripe, int) or stripe < 1:
            raise ValueError(f"stripe={stripe!r} is invalid; valid stripes: integers >= 1 dividing H and W")
        if num_heads == 1 and self.head_dim < 2:
            raise ValueError(f"cswin with heads=1 splits the head by channels and needs head width >= 2, got dim={dim}")
        self.stripe = stripe
        self.by_channels = num_heads == 1
        # channels of the vertical group; the horizontal group has the rest
        self.vertical_channels = self.head_dim // 2 if self.by_channels else (num_heads // 2) * self.head_dim
        self.lepe_vertical = lepe_conv(self.vertical_channels)
        self.lepe_horizontal = lepe_conv(dim - self.vertical_channels)

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        H, W = hw
        if H % self.stripe or W % self.stripe:
            common = [s for s in divisors(H) if W % s == 0]
            return [Reason("invalid", f"stripe={self.stripe} does not divide the grid (H, W)=({H}, {W}); CSWin "
                                      f"cannot pad: horizontal stripes need a divisor of H={H}, vertical ones a "
                                      f"divisor of W={W}; valid stripes for this grid: {common}")]
        return []

    @classmethod
    def whole_grid_options(cls, hw):
        return {"stripe": hw[0]} if hw[0] == hw[1] else {}

    def _split(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.by_channels:
            return t[..., : self.vertical_channels], t[..., self.vertical_channels :]
        g = self.num_heads // 2
        return t[:, :g], t[:, g:]

    def attend(self, q, k, v, hw):
        problems = self.reasons(hw=hw)
        if problems:
            raise ValueError(problems[0].text)
        H, W = hw
        s = self.stripe
        (qv, qh), (kv, kh), (vv, vh) = self._split(q), self._split(k), self._split(v)
        vert = windowed_attention(qv, kv, vv, hw, H, s) + windowed_lepe(self.lepe_vertical, vv, hw, H, s)
        horiz = windowed_attention(qh, kh, vh, hw, s, W) + windowed_lepe(self.lepe_horizontal, vh, hw, s, W)
        return torch.cat([vert, horiz], dim=-1 if self.by_channels else 1)

    def core_transient_elements(self, batch, hw):
        return 6 * batch * self.dim * hw[0] * hw[1]  # stripe copies of q, k, v, out; LePE in and out

    def core_flops(self, batch, hw):
        H, W = hw
        n = H * W
        if self.by_channels:
            hv = hh = 1
            dv, dh = self.vertical_channels, self.head_dim - self.vertical_channels
        else:
            hv, hh = self.num_heads // 2, self.num_heads - self.num_heads // 2
            dv = dh = self.head_dim
        attn = 4 * batch * n * (hv * H * self.stripe * dv + hh * self.stripe * W * dh)
        return attn + dwconv_flops(batch, self.dim, hw)

    def score_recompute_flops(self, batch, hw):
        return (self.core_flops(batch, hw) - dwconv_flops(batch, self.dim, hw)) // 2  # the stripes' QK^T


# -- neighborhood --------------------------------------------------------------
NEIGHBORHOOD_IMPLS = ("auto", "flex", "mask", "natten")


def neighborhood_mask_mod(hw: tuple[int, int], kernel: int):
    """FlexAttention mask_mod: key inside the query's k x k window, clamped into the grid (NATTEN)."""
    H, W = hw
    r = kernel // 2

    def mask_mod(b, h, q_idx, kv_idx):
        qr, qc = q_idx // W, q_idx % W
        kr, kc = kv_idx // W, kv_idx % W
        r0 = (qr - r).clamp(0, H - kernel)  # window start, shifted inwards at the border
        c0 = (qc - r).clamp(0, W - kernel)
        return (kr >= r0) & (kr < r0 + kernel) & (kc >= c0) & (kc < c0 + kernel)

    return mask_mod


def odd_kernels(limit: int) -> list[int]:
    return list(range(1, limit + 1, 2))


@register_attention(
    "neighborhood",
    family="window",
    complexity="O(N k^2 d)",
    needs="torch >= 2.5 (FlexAttention); flex backward needs CUDA; impl=natten: natten",
    source="Hassani et al. 2023, Neighborhood Attention (NAT, NATTEN semantics, no rpb)",
)
class NeighborhoodAttention(Attention):
    """2D neighborhood attention: each query attends to the k x k keys around
    it, k = ``kernel`` (odd). At the border the window is shifted to lie inside
    the grid (NATTEN), so every query sees exactly k*k keys.

    ``impl``: ``flex`` - FlexAttention with a block mask, torch.compile'd on the
    first call (on a 2-core CPU: 3 s with a warm inductor cache, 17.5 s cold).
    Inductor's CPU flex kernel has no float64, so float64 on CPU runs flex
    eagerly (it materialises the scores); FlexAttention has no backward on
    CPU (torch 2.13), so that raises Unsupported. ``mask`` -
    a dense N x N boolean mask through SDPA (runs everywhere, O(N^2)).
    ``natten`` - NATTEN's ``na2d`` (its fused CUDA kernels on a GPU, its Flex
    backend elsewhere) when the ``natten`` package is installed.
    ``auto`` - flex on CUDA, mask elsewhere. ``run_info`` says which ran.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, kernel: int = 7, impl: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe=False)
        if not isinstance(kernel, int) or kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel={kernel!r} must be odd; valid kernels: odd integers >= 1 (1, 3, 5, 7, ...)")
        self.kernel = kernel
        self.impl = check_impl("neighborhood", impl, NEIGHBORHOOD_IMPLS)
        self._ran = ""
        self._masks: dict[tuple, object] = {}

    def _grid_problem(self, hw) -> str:
        if self.kernel > min(hw):
            return (f"kernel={self.kernel} is larger than the grid (H, W)=({hw[0]}, {hw[1]}); "
                    f"valid kernels for this grid: {odd_kernels(min(hw))}")
        return ""

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        grid = self._grid_problem(hw)
        out = [Reason("invalid", grid)] if grid else []
        if device is None:
            return out
        problem = import_problem("natten.functional") if self.impl == "natten" else None
        if problem:
            out.append(Reason("unavailable", f"{problem} (impl=natten needs the natten package)"))
        if self._resolve(device) == "flex":
            if device.type not in ("cuda", "cpu"):
                out.append(Reason("unsupported", f"neighborhood impl 'flex' runs on CUDA or CPU only "
                                                 f"(device is {device.type})"))
            else:
                flex = compiled_cpu_flex_problem(device, dtype != torch.float64, hw[0] * hw[1])
                out += [Reason("unsupported", flex)] if flex else []
        return out

    def _resolve(self, device: torch.device) -> str:
        if self.impl == "auto":
            return "flex" if device.type == "cuda" else "mask"
        return self.impl

    def _mask(self, kind: str, hw, device):
        key = (kind, hw, device)
        if key not in self._masks:
            n = hw[0] * hw[1]
            mod = neighborhood_mask_mod(hw, self.kernel)
            if kind == "flex":
                from torch.nn.attention.flex_attention import create_block_mask

                self._masks[key] = create_block_mask(mod, None, None, n, n, device=device)
            else:
                idx = torch.arange(n, device=device)
                self._masks[key] = mod(None, None, idx[:, None], idx[None, :])  # (N, N) bool
        return self._masks[key]

    def core(self, q, k, v, hw):
        grid = self._grid_problem(hw)
        if grid:
            raise ValueError(grid)
        kind = self._resolve(q.device)
        if kind == "natten":
            return self._natten(q, k, v, hw)
        if kind == "mask":
            self._ran = "mask: dense boolean mask through SDPA"
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask("mask", hw, q.device))
        block_mask = self._mask("flex", hw, q.device)
        # inductor's CPU flex kernel has no float64: that case runs eager flex.
        compiled = not (q.device.type == "cpu" and q.dtype == torch.float64)
        self._ran = "flex: " + ("torch.compile(flex_attention)" if compiled else "eager flex_attention")
        # The one shared compiled flex (functional); it refuses a CPU backward with torch's reason.
        return flex_attend(q, k, v, block_mask=block_mask, compiled=compiled)

    def _natten(self, q, k, v, hw):
        """natten's na2d on its (B, H, W, heads, d) layout; (B, h, N, d) -> same."""
        problem = import_problem("natten.functional")
        if problem:
            raise Unavailable(problem)
        import natten.functional as nf

        B, h, N, d = q.shape

        def grid(t):
            return t.transpose(1, 2).reshape(B, hw[0], hw[1], h, d)

        try:
            with warnings.catch_warnings():  # natten warns that eager Flex is unfused: chosen by natten, not us
                warnings.simplefilter("ignore")
                out = nf.na2d(grid(q), grid(k), grid(v), kernel_size=self.kernel)
        except NotImplementedError as e:
            raise Unsupported(f"natten cannot run {q.dtype} head_dim={d} on {q.device.type}: {first_line(e)}") from None
        self._ran = f"natten {package_version('natten')}: na2d (backend chosen by natten)"
        return out.reshape(B, N, h, d).transpose(1, 2)

    def run_info(self):
        return {"impl_ran": self._ran} if self._ran else {}

    def core_transient_elements(self, batch, hw):
        # mask: the N x N mask (SDPA turns it into an additive float mask).
        # flex/auto: a lower bound, the CUDA path materialises nothing of size N^2
        # (CPU eager float64 flex does materialise the scores).
        n = hw[0] * hw[1]
        return n * n if self.impl == "mask" else 0

    def core_flops(self, batch, hw):
        return 4 * batch * self.num_heads * hw[0] * hw[1] * self.kernel**2 * self.head_dim

    def score_recompute_flops(self, batch, hw):
        return self.core_flops(batch, hw) // 2  # the useful QK^T again (the executed work is larger)
