"""Pure pieces the attention families share: layouts, LePE, SDPA, efficient
attention, window partitioning and FlexAttention.

Shapes: q, k, v are (B, h, N, d) with N = H * W tokens in raster order
(token = row * W + col); maps are (B, C, H, W) with C = h * d, channel
``head * d + j``.
"""
from __future__ import annotations

import time
import warnings
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import Unsupported, first_line

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def divisors(n: int) -> list[int]:
    return [i for i in range(1, n + 1) if n % i == 0]


# -- layouts and LePE --------------------------------------------------------
def to_map(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h, N, d) -> (B, h*d, H, W), channels in head order (channel = head*d + j)."""
    B, h, N, d = t.shape
    return t.permute(0, 1, 3, 2).reshape(B, h * d, hw[0], hw[1])


def from_map(m: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, h*d, H, W) -> (B, h, N, d); inverse of ``to_map``."""
    B, C, H, W = m.shape
    return m.reshape(B, heads, C // heads, H * W).permute(0, 1, 3, 2)


def lepe_conv(channels: int) -> nn.Conv2d:
    """LePE: depthwise 3x3 convolution, padding 1, with bias."""
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=True)


def apply_lepe(conv: nn.Conv2d, v: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Depthwise conv of v's channels over the H x W map; (B, h, N, d) -> same."""
    return from_map(conv(to_map(v, hw)), v.shape[1])


def dwconv_flops(batch: int, channels: int, hw: tuple[int, int], k: int = 3) -> int:
    return 2 * k * k * batch * channels * hw[0] * hw[1]


def exact_core_flops(batch: int, heads: int, head_dim: int, hw: tuple[int, int]) -> int:
    """QK^T and AV over all N tokens: 2 * 2*N*N*d per head."""
    n = hw[0] * hw[1]
    return 4 * batch * heads * n * n * head_dim


# -- exact attention through torch's SDPA ---------------------------------------
SDPA_IMPLS = ("auto", "flash", "efficient", "cudnn", "math")


def _sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend

    return {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[name]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """F.scaled_dot_product_attention pinned to the backend ``impl``; a backend
    that cannot run the case raises ``Unsupported`` with torch's reason."""
    if impl == "auto":
        return F.scaled_dot_product_attention(q, k, v)
    from torch.nn.attention import sdpa_kernel

    try:
        with sdpa_kernel(_sdpa_backend(impl)):
            return F.scaled_dot_product_attention(q, k, v)
    except RuntimeError as e:
        if "No available kernel" in str(e) or "not supported" in str(e).lower():
            raise Unsupported(
                f"SDPA backend {impl!r} cannot run {q.dtype} head_dim={q.shape[-1]} on {q.device.type}: {first_line(e)}"
            ) from None
        raise


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Shen et al.'s efficient attention, ELFATT's global branch (without LePE).

    q_hat = softmax over channels, k_hat = softmax over tokens, out = q_hat (k_hat^T v).
    No 1/sqrt(d) scale. (B, h, N, d) -> (B, h, N, d).
    """
    q_hat = q.softmax(dim=-1)
    # Softmax of K over tokens, taken on the (B, h, d, N) view: the reduction
    # then runs along the last axis instead of striding over N.
    k_hat_t = k.transpose(-2, -1).softmax(dim=-1)  # (B, h, d, N)
    context = k_hat_t @ v  # (B, h, d, d)
    return q_hat @ context


# -- windows (timm style: pure functions beside the modules) ---------------------
def window_partition(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, wh*ww, C); windows in raster order, tokens raster inside."""
    B, H, W, C = x.shape
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // wh) * (W // ww), wh * ww, C)


def window_reverse(windows: torch.Tensor, wh: int, ww: int, H: int, W: int) -> torch.Tensor:
    """(B, nW, wh*ww, C) -> (B, H, W, C); inverse of ``window_partition``."""
    B, C = windows.shape[0], windows.shape[-1]
    x = windows.view(B, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W, C)


def windowed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int], wh: int, ww: int,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """SDPA inside wh x ww windows; (B, h, N, d) with N = H*W, wh | H, ww | W -> same.

    Windows sit on SDPA's "heads" axis, (B*h, nW, L, d), so a per-window mask
    (nW, L, L) broadcasts without a copy.
    """
    B, h, N, d = q.shape
    H, W = hw

    def part(t):
        return window_partition(t.reshape(B * h, H, W, d), wh, ww)

    out = F.scaled_dot_product_attention(part(q), part(k), part(v), attn_mask=mask)
    return window_reverse(out, wh, ww, H, W).reshape(B, h, N, d)


def windowed_lepe(conv: nn.Conv2d, v: torch.Tensor, hw: tuple[int, int], wh: int, ww: int) -> torch.Tensor:
    """The depthwise conv applied to each wh x ww window separately (zero
    padding at window edges). v (B, h, N, d), channel = head*d + j -> same shape."""
    B, h, N, d = v.shape
    H, W = hw
    m = v.permute(0, 2, 1, 3).reshape(B, H, W, h * d)
    w = window_partition(m, wh, ww)  # (B, nW, L, C)
    nW = w.shape[1]
    w = conv(w.transpose(2, 3).reshape(B * nW, h * d, wh, ww))  # (B*nW, C, wh, ww)
    w = w.reshape(B, nW, h * d, wh * ww).transpose(2, 3)  # (B, nW, L, C)
    return window_reverse(w, wh, ww, H, W).reshape(B, N, h, d).permute(0, 2, 1, 3)


# -- FlexAttention -------------------------------------------------------------
_COMPILED_FLEX: Callable | None = None  # torch.compile(flex_attention), built on first use
FLEX_COMPILE_S: dict[str, float] = {}  # device type -> seconds of the first compiled call


def _compiled_flex() -> Callable:
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        # torch's default dynamic=None: the second distinct shape compiles a
        # shape-generic kernel, so a sweep over many grids never reaches
        # dynamo's recompile limit, past which it would quietly run eager flex.
        _COMPILED_FLEX = torch.compile(flex_attention)
    return _COMPILED_FLEX


def flex_uses_compile(device: torch.device, compiled: bool | None = None) -> bool:
    """``compiled=None`` means: compiled on CUDA, eager elsewhere (see ``flex_attend``)."""
    return device.type == "cuda" if compiled is None else compiled


CPU_FLEX_TOKEN_MULTIPLE = 64


def compiled_cpu_flex_problem(device: torch.device, compiled: bool, tokens: int) -> str | None:
    """Why compiled FlexAttention must not run this CPU case, or None.

    Seen with torch 2.13.0+cpu: the compiled CPU kernel returned wrong values
    (errors up to 0.8) or NaN, differently from run to run, at sequence
    lengths 72, 120 and 136; at multiples of 64 it matched float64 every time.
    """
    if not compiled or device.type != "cpu" or tokens % CPU_FLEX_TOKEN_MULTIPLE == 0:
        return None
    return (f"compiled FlexAttention on CPU (torch {torch.__version__}) gave wrong values or NaN at sequence "
            f"lengths that are not multiples of {CPU_FLEX_TOKEN_MULTIPLE} (N={tokens} here); "
            f"valid: N a multiple of {CPU_FLEX_TOKEN_MULTIPLE}, or the eager / mask implementation")


_CPU_BACKWARD_PROBLEM: list[str | None] = []


def flex_cpu_backward_problem() -> str | None:
    """torch's own answer to "can FlexAttention take gradients on CPU?" (asked once).

    torch 2.13 refuses any CPU input that requires grad, eager or compiled,
    even under no_grad; the probe asks torch instead of hard-coding a version.
    """
    if not _CPU_BACKWARD_PROBLEM:
        from torch.nn.attention.flex_attention import flex_attention

        x = torch.zeros(1, 1, 1, 16, requires_grad=True)
        problem = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flex_attention(x, x, x)
        except NotImplementedError as e:
            problem = f"FlexAttention has no backward on CPU in torch {torch.__version__} ({first_line(e)})"
        _CPU_BACKWARD_PROBLEM.append(problem)
    return _CPU_BACKWARD_PROBLEM[0]


def _compiled_call(q, k, v, score_mod, block_mask):
    """The shared compiled flex. A compile that fails (seen on CPU: inductor's
    C++ build of a second, shape-generic kernel for another neighborhood size)
    is retried once from empty caches; a second failure is the caller's."""
    global _COMPILED_FLEX
    first = q.device.type not in FLEX_COMPILE_S
    t0 = time.perf_counter()
    try:
        out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)
    except torch._dynamo.exc.BackendCompilerFailed as e:
        if isinstance(e.inner_exception, NotImplementedError):
            raise
        torch._dynamo.reset()
        _COMPILED_FLEX = None
        out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)
    if first:
        if q.device.type == "cuda":
            torch.cuda.synchronize(q.device)
        FLEX_COMPILE_S[q.device.type] = time.perf_counter() - t0
    return out


def flex_attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: BlockMask | None = None,
    score_mod: Callable | None = None,
    *,
    compiled: bool | None = None,
) -> torch.Tensor:
    """softmax(QK^T / sqrt(d) [score_mod]) V with FlexAttention; (B, h, N, d) -> same.

    ``block_mask``: a ``torch.nn.attention.flex_attention.BlockMask``, or None
    for no mask. ``score_mod(score, b, h, q_idx, kv_idx)``: FlexAttention's
    score hook, or None. ``compiled``: None = torch.compile on CUDA, eager
    elsewhere. Eager FlexAttention is unfused (it materialises the scores); on
    CPU it is the default because compiling costs tens of seconds per process
    and brings no backward (torch 2.13). Raises ``Unsupported`` with torch's
    reason when the case cannot run (CPU inputs that require grad, a dtype or
    head width the compiled kernel lacks, compiled on CPU at a length where it errs).
    """
    if q.device.type == "cpu" and (q.requires_grad or k.requires_grad or v.requires_grad):
        problem = flex_cpu_backward_problem()
        if problem:
            raise Unsupported(problem)
    use_compile = flex_uses_compile(q.device, compiled)
    problem = compiled_cpu_flex_problem(q.device, use_compile, q.shape[-2])
    if problem:
        raise Unsupported(problem)
    how = "compiled" if use_compile else "eager"
    what = f"FlexAttention ({how}) cannot run {q.dtype} head_dim={q.shape[-1]} on {q.device.type}"
    try:
        if use_compile:
            return _compiled_call(q, k, v, score_mod, block_mask)
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():  # eager is chosen deliberately; torch warns that it is unfused
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    except NotImplementedError as e:
        raise Unsupported(f"{what}: {first_line(e)}") from None
    except torch._dynamo.exc.BackendCompilerFailed as e:
        inner = e.inner_exception
        if isinstance(inner, NotImplementedError) or "NotImplementedError" in str(inner):
            raise Unsupported(f"{what}: {first_line(inner)}") from None
        raise  # failed again from empty caches: an error of this case, with its traceback
