"""Prepared launches: a plan's kernel launches with every argument decided
once per case, so that a call only reads the data pointers of its tensors.

A ``Prepared`` launch holds its Triton kernel, grid, warps, stages and its
arguments in the kernel's signature order: plain values (strides, sizes,
constexprs) or ``Ptr`` (slot, byte offset, dtype): "the tensor in call slot
``slot``, ``byte offset`` bytes on". A call passes its tensors as a list of
slots (``None`` where a slot is unused).

Two ways to launch:

- ``jit``: triton's own ``kernel[grid](...)`` with typed 1-element tensor
  views at the pointers (the interpreter, the first call of a case, and the
  safe fallback ``Tuning(fast_launch=False)``). It returns the compiled
  kernel, which is kept;
- ``fast``: the kept compiled kernel's launcher called directly with integer
  addresses, what ``JITFunction.run`` does after its binding, specialisation
  and cache lookup, which this skips. A compiled kernel is specialised on
  its integer arguments (fixed per case: part of the plan's key) and on
  which pointers are 16-byte aligned; the kept kernels are therefore keyed
  by the slots' addresses modulo 16 (pointer offsets are fixed per case),
  and a call with another alignment compiles (or finds) its own set.

Only triton 3.6's launcher signature is known here: other versions always
take the ``jit`` way (``fast_launch_reason``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

KNOWN_TRITON = ("3.6.",)
FALLBACK = 3  # the call slot every plan fills (the output): typed stand-in for an absent tensor


@dataclass(frozen=True)
class Ptr:
    """A pointer argument: call slot, byte offset from its data pointer, element dtype."""

    slot: int
    offset: int
    dtype: torch.dtype


def fast_launch_reason() -> str:
    """Why compiled kernels cannot be launched directly here ('' when they can)."""
    import triton

    if not triton.__version__.startswith(KNOWN_TRITON):
        return f"direct launches know triton {', '.join(KNOWN_TRITON)}x only, not {triton.__version__}"
    return ""


def pointer_view(t: torch.Tensor, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-element tensor of ``dtype`` at ``offset`` bytes past ``t``'s data pointer,
    on ``t``'s storage (what triton's JIT and interpreter need to see a typed pointer)."""
    size = dtype.itemsize
    start = t.storage_offset() * t.element_size() + offset
    if start % size:
        raise ValueError(f"a {dtype} pointer at byte {start} is not aligned to its element size")
    return torch.empty(0, dtype=dtype, device=t.device).set_(t.untyped_storage(), start // size, (1,), (1,))


class Prepared:
    """One kernel launch of a plan (see the module docstring)."""

    __slots__ = ("kernel", "name", "grid", "args", "ptrs", "consts", "warps", "stages", "roles")

    def __init__(self, kernel, name: str, grid: tuple, values: dict, consts: dict, warps: int, stages: int,
                 roles: dict | None = None):
        self.consts = consts  # the compile-time constants: with warps and stages, what one binary is
        values = {**values, **consts}
        missing = [n for n in kernel.arg_names if n not in values]
        extra = sorted(set(values) - set(kernel.arg_names))
        if missing or extra:
            raise TypeError(f"{name}: arguments missing {missing}, unknown {extra}")
        self.kernel, self.name, self.warps, self.stages = kernel, name, warps, stages
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.args = [values[n] for n in kernel.arg_names]
        self.ptrs = tuple((i, a.slot, a.offset, a.dtype) for i, a in enumerate(self.args) if isinstance(a, Ptr))
        self.roles = roles or {name: self.programs}

    @property
    def programs(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    def compile_for(self, capability: int = 90):
        """This launch compiled for a CUDA GPU of ``capability`` without one (ahead of time), as
        triton's JIT would compile it there: the arguments go through triton's own binder, so
        integers are specialised as at run time (== 1: constexpr; % 16: divisible) and pointers
        as 16-byte aligned (what the plans' buffers are)."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        target = GPUTarget("cuda", capability, 32)
        backend = make_backend(target)
        args = [torch.empty(16, dtype=a.dtype) if isinstance(a, Ptr) else a for a in self.args]
        kwargs = {"num_warps": self.warps, "num_stages": self.stages, "debug": False}
        binder = create_function_from_signature(self.kernel.signature, self.kernel.params, backend)
        bound, specialization, _ = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self.kernel._pack_args(backend, kwargs, bound, specialization, kwargs)
        return triton.compile(ASTSource(self.kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)

    def jit(self, slots: list):
        """Launch through triton's JIT (or interpreter); returns what it returns (the compiled kernel)."""
        args = list(self.args)
        for i, slot, offset, dtype in self.ptrs:
            t = slots[slot]  # an absent tensor (a branch the layer lacks) is a role this launch skips:
            args[i] = pointer_view(slots[FALLBACK], 0, dtype) if t is None else pointer_view(t, offset, dtype)
        return self.kernel[self.grid](*args, num_warps=self.warps, num_stages=self.stages)

    def fast(self, compiled, addrs: list, stream, hooks) -> None:
        """Launch ``compiled`` (this launch's kernel, compiled by ``jit``) at integer addresses."""
        args = list(self.args)
        for i, slot, offset, _ in self.ptrs:
            args[i] = addrs[slot] + offset
        g0, g1, g2 = self.grid
        if hooks is None:
            compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *args)
        else:
            meta = compiled.launch_metadata(self.grid, stream, *args)
            compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, meta, *hooks, *args)


def _hooks():
    """triton's launch hooks when any is set (a profiler), else None: an empty chain does nothing."""
    from triton import knobs

    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    if enter is None and leave is None:
        return None
    if getattr(enter, "calls", True) or getattr(leave, "calls", True):
        return enter, leave
    return None


class Launcher:
    """Runs a plan's prepared launches, the fast way once each is compiled."""

    __slots__ = ("launches", "fast_ok", "compiled", "usage", "stream_of")

    def __init__(self, launches: list[Prepared], fast: bool, device: torch.device, usage: dict | None = None):
        self.launches = launches
        self.fast_ok = fast
        self.compiled: dict[tuple, list] = {}  # slot addresses mod 16 -> compiled kernel per launch
        self.usage = {} if usage is None else usage  # receives '<launch>_regs_spills' at compile
        self.stream_of = None
        if fast:
            from triton.runtime import driver

            get_stream, index = driver.active.get_current_stream, device.index or 0
            self.stream_of = lambda: get_stream(index)

    def __call__(self, slots: list) -> None:
        if not self.fast_ok:
            for p in self.launches:
                p.jit(slots)
            return
        addrs = [0 if t is None else t.data_ptr() for t in slots]
        key = tuple(a & 15 for a in addrs)
        kept = self.compiled.get(key)
        if kept is None:  # the first call with this alignment: triton compiles (or finds) each kernel
            self.compiled[key] = self._compile(slots)
            return
        stream, hooks = self.stream_of(), _hooks()
        for p, c in zip(self.launches, kept):
            p.fast(c, addrs, stream, hooks)

    def _compile(self, slots: list) -> list:
        kept = []
        for p in self.launches:
            c = p.jit(slots)
            if hasattr(c, "result"):  # triton's async compile mode hands a future
                c = c.result()
            kept.append(c)
            if hasattr(c, "n_regs"):
                self.usage[f"{p.name}_regs_spills"] = f"{c.n_regs}/{c.n_spills}"
        return kept
