"""Exact softmax attention from optional packages: flash-attn (FlashAttention
2, 3 and 4) and xformers.

Each computes softmax(QK^T / sqrt(d)) V over all N tokens, so FLOPs are those
of ``exact.py``: 4*B*h*N^2*d (+ 2*9*B*C*N with ``lepe=True``).

Every backend says *why* it cannot run: ``Unavailable`` for a package problem
(not installed, does not import, C++ ops built for another torch),
``Unsupported`` for the device or dtype. ``reasons`` does the same checks
up front (the import check is cached per process).
"""
from __future__ import annotations

import importlib

import torch

from .base import ExactAttention, check_impl
from .errors import Reason, Unavailable, Unsupported
from .packages import import_problem, package_version
from .registry import register_attention


def _to_bnhd(t: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> (B, N, h, d), a view (last axis stays contiguous)."""
    return t.transpose(1, 2)


# --------------------------------------------------------------------------
# flash-attn: FA2 (flash_attn), FA3 (flash_attn_interface, Hopper), FA4 (flash_attn.cute)
# --------------------------------------------------------------------------
FLASH_IMPLS = ("auto", "fa2", "fa3", "fa4")
FLASH_MODULES = {"fa2": "flash_attn", "fa3": "flash_attn_interface", "fa4": "flash_attn.cute"}
FLASH_PACKAGES = {"fa2": "flash-attn", "fa3": "flash-attn (hopper/ build: flash_attn_interface)",
                  "fa4": "flash-attn-4"}


def flash_generation(impl: str, device: torch.device) -> str:
    """The generation ``impl`` resolves to on ``device``: auto is FA3 on a
    Hopper GPU when it is installed, else FA2 (FA4 is asked for by name)."""
    if impl != "auto":
        return impl
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9 \
            and import_problem(FLASH_MODULES["fa3"]) is None:
        return "fa3"
    return "fa2"


def flash_case_reasons(impl: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Device/dtype/shape reasons flash-attn cannot run (package problems aside)."""
    if device.type != "cuda":
        return [f"flash-attn runs on CUDA only (device is {device.type})"]
    reasons = []
    if dtype not in (torch.float16, torch.bfloat16):
        reasons.append(f"flash-attn runs float16/bfloat16 only, not {dtype}")
    if head_dim > 256:
        reasons.append(f"flash-attn supports head_dim <= 256, not {head_dim}")
    cc = torch.cuda.get_device_capability(device)
    gen = flash_generation(impl, device)
    if gen == "fa2" and cc < (8, 0):
        reasons.append(f"FlashAttention-2 needs compute capability >= 8.0 (Ampere); this GPU is {cc[0]}.{cc[1]}")
    if gen == "fa3" and cc[0] != 9:
        reasons.append(f"FlashAttention-3 (flash_attn_interface) is built for Hopper (9.x); this GPU is {cc[0]}.{cc[1]}")
    if gen == "fa4" and cc[0] not in (9, 10):
        reasons.append(f"FlashAttention-4 (flash_attn.cute) compiles for Hopper and Blackwell (9.x, 10.x); "
                       f"this GPU is {cc[0]}.{cc[1]}")
    return reasons


@register_attention(
    "flash_attn",
    family="exact",
    complexity="O(N^2 d), O(N) memory (fused)",
    needs="impl=fa2: flash-attn; fa3: flash_attn_interface (Hopper); fa4: flash-attn-4 (Hopper/Blackwell); "
          "CUDA, fp16/bf16",
    source="Dao 2023, FlashAttention-2; Shah et al. 2024, FlashAttention-3; FlashAttention-4 (CuTeDSL)",
)
class FlashAttnAttention(ExactAttention):
    """``flash_attn_func`` on (B, N, h, d). ``impl``: ``fa2`` (flash_attn),
    ``fa3`` (flash_attn_interface, Hopper), ``fa4`` (flash_attn.cute, compiled
    at run time for Hopper/Blackwell) or ``auto`` (fa3 on a Hopper GPU when
    installed, else fa2). Scale 1/sqrt(d), no dropout, not causal.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False, impl: str = "auto"):
        super().__init__(dim, num_heads, qkv_bias, lepe)
        self.impl = check_impl("flash_attn", impl, FLASH_IMPLS)

    def _package_problem(self, device) -> str:
        gen = flash_generation(self.impl, device)
        problem = import_problem(FLASH_MODULES[gen])
        return f"{problem} (impl={gen} needs {FLASH_PACKAGES[gen]})" if problem else ""

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        if device is None:
            return []
        package = self._package_problem(device)
        return ([Reason("unavailable", package)] if package else []) + [
            Reason("unsupported", r) for r in flash_case_reasons(self.impl, device, dtype, self.head_dim)]

    def core(self, q, k, v, hw):
        package = self._package_problem(q.device)
        if package:
            raise Unavailable(package)
        case = flash_case_reasons(self.impl, q.device, q.dtype, q.shape[-1])
        if case:
            raise Unsupported("; ".join(case))
        gen = flash_generation(self.impl, q.device)
        module = importlib.import_module(FLASH_MODULES[gen])
        out = module.flash_attn_func(_to_bnhd(q), _to_bnhd(k), _to_bnhd(v), softmax_scale=q.shape[-1] ** -0.5,
                                     causal=False)
        if isinstance(out, tuple):  # FA3 and FA4 releases may return (out, softmax_lse)
            out = out[0]
        self._ran = f"{FLASH_MODULES[gen]} {package_version(FLASH_MODULES[gen])}: flash_attn_func ({gen})"
        return out.transpose(1, 2)  # (B, N, h, d) -> (B, h, N, d)


# --------------------------------------------------------------------------
# xformers memory_efficient_attention
# --------------------------------------------------------------------------
def xformers_problem() -> str | None:
    """Why xformers' attention cannot run at all here, or None.

    An xformers wheel built for another torch imports, but its C++ ops do not
    load, and then ``memory_efficient_attention`` finds no operator: that is
    caught here with xformers' own load error.
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
        f"xformers {package_version('xformers')} imports but its C++ ops did not load, so "
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
class XformersAttention(ExactAttention):
    """``xformers.ops.memory_efficient_attention`` on (B, N, h, d), scale
    1/sqrt(d), no bias. xformers' dispatcher picks the kernel.
    FLOPs 4*B*h*N^2*d (+ LePE)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, lepe: bool = False):
        super().__init__(dim, num_heads, qkv_bias, lepe)

    def reasons(self, *, hw, device=None, dtype=None, batch=1):
        if device is None:
            return []
        problem = xformers_problem()
        return ([Reason("unavailable", problem)] if problem else []) + [
            Reason("unsupported", r) for r in xformers_case_reasons(device, dtype)]

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
        self._ran = f"xformers {package_version('xformers')}: memory_efficient_attention (kernel picked by xformers)"
        return out.transpose(1, 2)
