"""Exact softmax attention through optional backends: flash-attn, xformers, FlexAttention.

Each computes softmax(QK^T / sqrt(d)) V over all N tokens, so FLOPs are those
of ``exact.py``: QK^T and AV, 4*B*h*N^2*d (+ 2*9*B*C*N with ``lepe=True``).
The fused kernels do the same arithmetic without materialising the N x N
scores; the counts are analytic (a profiler cannot see inside them).

Every backend is optional and says *why* it cannot run: ``Unavailable`` for a
package problem (not installed, does not import, C++ ops built for another
torch), ``Unsupported`` for the device or dtype. ``unsupported_reasons`` does
the same checks up front (the import check is cached per process).
"""
from __future__ import annotations

import functools
import importlib
import time
import warnings
from typing import TYPE_CHECKING, Callable

import torch

from .base import Attention, Unavailable, Unsupported
from .exact import exact_core_flops
from .registry import register_attention

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@functools.lru_cache(maxsize=None)
def import_problem(module: str) -> str | None:
    """None when ``module`` imports, else the real reason it does not.

    Cached per process (tests clear it with ``import_problem.cache_clear()``).
    A broken optional package can raise anything at import, hence the broad catch.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name and e.name.split(".")[0] != top:
            return f"{top} is installed but its dependency {e.name} is missing (ModuleNotFoundError: {e})"
        return f"{top} is not installed (ModuleNotFoundError: {e})"
    except Exception as e:  # noqa: BLE001 - ImportError, OSError from a bad .so, RuntimeError...
        hint = "; an undefined C++ symbol means it was built for another torch" if "undefined symbol" in str(e) else ""
        return f"{module} is installed but does not import ({type(e).__name__}: {_first_line(e)}){hint}"
    return None


def _package_version(module: str) -> str:
    return str(getattr(importlib.import_module(module), "__version__", "unknown version"))


def _to_bnhd(t: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> (B, N, h, d), a view (last axis stays contiguous)."""
    return t.transpose(1, 2)


# --------------------------------------------------------------------------
# flash-attn (FlashAttention-2 package; FlashAttention-3 on Hopper)
# --------------------------------------------------------------------------
FLASH_VERSIONS = ("auto", "2", "3")
_FLASH_MODULE = {"2": "flash_attn", "3": "flash_attn_interface"}


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def _flash_version(version: str, device: torch.device) -> str:
    """The FlashAttention generation ``version`` resolves to on ``device``."""
    if version != "auto":
        return version
    if device.type == "cuda" and _cuda_capability(device)[0] == 9 and import_problem(_FLASH_MODULE["3"]) is None:
        return "3"
    return "2"


def flash_case_reasons(version: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Device/dtype/shape reasons flash-attn cannot run (package problems aside)."""
    reasons = []
    if device.type != "cuda":
        return [f"flash-attn runs on CUDA only (device is {device.type})"]
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"flash-attn runs float16/bfloat16 only, not {dtype}")
    if head_dim > 256:
        reasons.append(f"flash-attn supports head_dim <= 256, not {head_dim}")
    cc = _cuda_capability(device)
    v = _flash_version(version, device)
    if v == "2" and cc < (8, 0):
        reasons.append(f"FlashAttention-2 needs compute capability >= 8.0 (Ampere); this GPU is {cc[0]}.{cc[1]}")
    if v == "3" and cc[0] != 9:
        reasons.append(f"FlashAttention-3 (flash_attn_interface) is built for Hopper (9.x); this GPU is {cc[0]}.{cc[1]}")
    return reasons


@register_attention(
    "flash_attn",
    family="exact",
    complexity="O(N^2 d), O(N) memory (fused)",
    needs="flash-attn (FA2) or flash_attn_interface (FA3, Hopper); CUDA, fp16/bf16",
    source="Dao 2023, FlashAttention-2; Shah et al. 2024, FlashAttention-3",
)
class FlashAttnAttention(Attention):
    """``flash_attn_func`` on (B, N, h, d). ``version``: ``2`` (flash_attn),
    ``3`` (flash_attn_interface, Hopper) or ``auto`` (3 on a Hopper GPU when
    installed, else 2). Scale 1/sqrt(d), no dropout, not causal.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    exact = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, version: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        if version not in FLASH_VERSIONS:
            raise ValueError(f"unknown flash-attn version {version!r}; valid versions: {', '.join(FLASH_VERSIONS)}")
        self.version = version
        self._ran = ""

    def _package_reasons(self, device: torch.device) -> list[str]:
        problem = import_problem(_FLASH_MODULE[_flash_version(self.version, device)])
        return [problem] if problem else []

    def unavailable_reasons(self, device):
        return self._package_reasons(device)

    def unsupported_reasons(self, *, device, dtype, hw, batch):
        return flash_case_reasons(self.version, device, dtype, self.head_dim)

    def core(self, q, k, v, hw):
        package = self._package_reasons(q.device)
        if package:
            raise Unavailable(package[0])
        case = flash_case_reasons(self.version, q.device, q.dtype, q.shape[-1])
        if case:
            raise Unsupported("; ".join(case))
        version = _flash_version(self.version, q.device)
        module = importlib.import_module(_FLASH_MODULE[version])
        out = module.flash_attn_func(_to_bnhd(q), _to_bnhd(k), _to_bnhd(v), softmax_scale=q.shape[-1] ** -0.5, causal=False)
        if isinstance(out, tuple):  # some FA3 releases return (out, softmax_lse)
            out = out[0]
        self._ran = f"{_FLASH_MODULE[version]} {_package_version(_FLASH_MODULE[version])}: flash_attn_func (FlashAttention-{version})"
        return out.transpose(1, 2)  # (B, N, h, d) -> (B, h, N, d)

    def run_info(self):
        return {"kernel": self._ran} if self._ran else {}

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)


# --------------------------------------------------------------------------
# xformers memory_efficient_attention
# --------------------------------------------------------------------------
def xformers_problem() -> str | None:
    """Why xformers' attention cannot run at all here, or None.

    Seen on the reference GPU machine and reproduced on a CPU box: xformers
    0.0.35 imports on another torch but its C++ ops do not load, and then
    ``memory_efficient_attention`` finds no operator. That is caught here.
    """
    problem = import_problem("xformers.ops")
    if problem:
        return problem
    xformers = importlib.import_module("xformers")
    if getattr(xformers, "_has_cpp_library", True):
        return None
    cpp_lib = getattr(xformers, "_cpp_lib", None)
    cause = getattr(cpp_lib, "_cpp_library_load_exception", None)
    detail = " ".join(" ".join(str(cause).strip().splitlines()[:3]).split()) if cause else "no detail given"
    return (
        f"xformers {_package_version('xformers')} imports but its C++ ops did not load, so "
        f"memory_efficient_attention has no operator: {detail}"
    )


XFORMERS_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def xformers_case_reasons(device: torch.device, dtype: torch.dtype) -> list[str]:
    if device.type != "cuda":
        return [f"xformers memory_efficient_attention has CUDA operators only (device is {device.type})"]
    if dtype not in XFORMERS_DTYPES:
        return [f"xformers memory_efficient_attention runs float16/bfloat16/float32, not {dtype}"]
    return []


@register_attention(
    "xformers",
    family="exact",
    complexity="O(N^2 d), O(N) memory (fused)",
    needs="xformers with C++/CUDA ops built for this torch; CUDA",
    source="xformers.ops.memory_efficient_attention (Rabe & Staats 2021; cutlass/flash kernels)",
)
class XformersAttention(Attention):
    """``xformers.ops.memory_efficient_attention`` on (B, N, h, d), scale
    1/sqrt(d), no bias. xformers' dispatcher picks the kernel.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    exact = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        self._ran = ""

    def unavailable_reasons(self, device):
        problem = xformers_problem()
        return [problem] if problem else []

    def unsupported_reasons(self, *, device, dtype, hw, batch):
        return xformers_case_reasons(device, dtype)

    def core(self, q, k, v, hw):
        problem = xformers_problem()
        if problem:
            raise Unavailable(problem)
        case = xformers_case_reasons(q.device, q.dtype)
        if case:
            raise Unsupported("; ".join(case))
        xops = importlib.import_module("xformers.ops")
        try:
            out = xops.memory_efficient_attention(_to_bnhd(q), _to_bnhd(k), _to_bnhd(v), scale=q.shape[-1] ** -0.5)
        except NotImplementedError as e:  # "No operator found for ...": xformers lists why per kernel
            detail = " ".join(line.strip() for line in str(e).strip().splitlines()[:12])
            raise Unsupported(f"xformers has no kernel for {q.dtype} head_dim={q.shape[-1]} on {q.device.type}: {detail}") from None
        self._ran = f"xformers {_package_version('xformers')}: memory_efficient_attention (kernel picked by xformers)"
        return out.transpose(1, 2)

    def run_info(self):
        return {"kernel": self._ran} if self._ran else {}

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)


# --------------------------------------------------------------------------
# FlexAttention
# --------------------------------------------------------------------------
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


@functools.lru_cache(maxsize=None)
def flex_cpu_backward_problem() -> str | None:
    """torch's own answer to "can FlexAttention take gradients on CPU?" (cached).

    torch 2.13 refuses any CPU input that requires grad, eager or compiled,
    even under no_grad; the probe asks torch instead of hard-coding a version.
    """
    from torch.nn.attention.flex_attention import flex_attention

    x = torch.zeros(1, 1, 1, 16, requires_grad=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(x, x, x)
    except NotImplementedError as e:
        return f"FlexAttention has no backward on CPU in torch {torch.__version__} ({_first_line(e)})"
    return None


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

    ``block_mask``: a ``torch.nn.attention.flex_attention.BlockMask`` (from
    ``create_block_mask(mask_mod, B, H, N, N, device=q.device)``), or None for
    no mask. ``score_mod(score, b, h, q_idx, kv_idx)``: FlexAttention's score
    hook, or None. ``compiled``: None = torch.compile on CUDA, eager elsewhere.
    Eager FlexAttention is unfused (it materialises the scores); on CPU it is
    the default because compiling costs tens of seconds per process and brings
    no backward (torch 2.13). Raises ``Unsupported`` with torch's reason when
    the case cannot run (CPU with inputs that require grad, a dtype or head
    width the compiled kernel lacks).
    """
    if q.device.type == "cpu" and (q.requires_grad or k.requires_grad or v.requires_grad):
        problem = flex_cpu_backward_problem()
        if problem:
            raise Unsupported(problem)
    use_compile = flex_uses_compile(q.device, compiled)
    how = "compiled" if use_compile else "eager"
    try:
        if use_compile:
            first = q.device.type not in FLEX_COMPILE_S
            t0 = time.perf_counter()
            out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask)
            if first:
                if q.device.type == "cuda":
                    torch.cuda.synchronize(q.device)
                FLEX_COMPILE_S[q.device.type] = time.perf_counter() - t0
            return out
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():  # eager is chosen deliberately; torch warns that it is unfused
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    except NotImplementedError as e:
        raise Unsupported(f"FlexAttention ({how}) cannot run {q.dtype} head_dim={q.shape[-1]} on {q.device.type}: {_first_line(e)}") from None
    except torch._dynamo.exc.BackendCompilerFailed as e:
        inner = e.inner_exception
        if isinstance(inner, NotImplementedError) or "NotImplementedError" in str(inner):
            raise Unsupported(f"FlexAttention (compiled) cannot run {q.dtype} head_dim={q.shape[-1]} on {q.device.type}: {_first_line(inner)}") from None
        raise


FLEX_MODES = ("auto", "compiled", "eager")


@register_attention(
    "flex",
    family="exact",
    complexity="O(N^2 d), O(N) memory when compiled",
    needs="torch >= 2.5; compiled on CUDA (head_dim >= 16); CPU forward only",
    source="torch.nn.attention.flex_attention (Dong et al. 2024, FlexAttention)",
)
class FlexAttention(Attention):
    """FlexAttention with no mask and no score_mod. ``mode``: ``auto``
    (compiled on CUDA, eager elsewhere), ``compiled`` or ``eager``. The
    compiled function is built lazily on the first call and shared.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    exact = True

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, mode: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        if mode not in FLEX_MODES:
            raise ValueError(f"unknown flex mode {mode!r}; valid modes: {', '.join(FLEX_MODES)}")
        self.mode = mode
        self._ran = ""

    def _compiled(self) -> bool | None:
        return None if self.mode == "auto" else self.mode == "compiled"

    def unsupported_reasons(self, *, device, dtype, hw, batch):
        # The harness times the forward pass, which runs on CPU too; a CPU
        # backward is refused by flex_attend itself, with torch's reason.
        reasons = []
        compiled = flex_uses_compile(device, self._compiled())
        if compiled and device.type == "cuda" and self.head_dim < 16:
            reasons.append(f"compiled FlexAttention on CUDA needs head_dim >= 16 (tl.dot), not {self.head_dim}")
        if compiled and device.type == "cpu" and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            reasons.append(f"compiled FlexAttention on CPU runs float32/float16/bfloat16, not {dtype}")
        return reasons

    def core(self, q, k, v, hw):
        compiled = self._compiled()
        out = flex_attend(q, k, v, compiled=compiled)
        if flex_uses_compile(q.device, compiled):
            took = FLEX_COMPILE_S.get(q.device.type)
            self._ran = "torch.compile(flex_attention)" + (f"; first compiled call in this process took {took:.1f} s" if took else "")
        else:
            self._ran = "eager flex_attention (unfused: materialises the N x N scores)"
        return out

    def run_info(self):
        return {"kernel": self._ran} if self._ran else {}

    def core_flops(self, batch, hw):
        return exact_core_flops(batch, self.num_heads, self.head_dim, hw)
