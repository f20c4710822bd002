"""ELFATT's fast path: the reference function (``attentions/elfatt.py``) as a
few fused Triton launches writing one output buffer.

It knows nothing of the module: the caller describes the layer with an
``ElfattSpec`` (how heads split into branches, widths, block rows), hands the
LePE weights as tensors (``LepeWeights``) and the declared ``Tuning``.

Global heads:
  1. ``global_context_kernel``: per (batch, head, token split) the column
     softmax statistics of K (max, sum of exp) fused with the d x d context
     k_hat^T V, one pass over K and V;
  2. the combine (with several splits): merges the splits in a fixed order
     (deterministic, no atomics) into ctx (B*g, d, d), as the last programs
     of the stripe launch (or ``global_combine_kernel`` on its own);
  3. ``global_out_kernel``: channel softmax of Q, Q_hat @ ctx, + global LePE,
     stored at the global heads' channels of the output.
Local heads: ``stripe_attn_kernel``, flash-style softmax attention inside
each stripe + the stripe LePE, stored at the local heads' channels.
Alternative local path (``Tuning(local="sdpa")``): torch SDPA on an
uncopied stripe-blocked view, then ``stripe_epilogue_kernel`` adds the LePE.
``forward_plan`` decides every launch once per case; a call allocates the
output (and, for the backward, one ``saved`` buffer) and launches
(``launch.Launcher``: each compiled kernel directly after its first call).

The output is one (B, N, heads*d) buffer returned as the (B, h, N, d) view,
so the layer's merge of heads before ``proj`` is free. Inputs are used
through their strides (the layer passes permuted views of the qkv output).

Autograd lives with the module (``attentions/elfatt.py``); this module is
forward only.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
from collections import OrderedDict

import torch

from ..errors import Unavailable, Unsupported
from ..functional import sdpa
from . import forward_plan as fp
from .graphs import GraphReplay
from .launch import Launcher, Prepared, fast_launch_reason
from .spec import ElfattSpec, LepeWeights, Tuning

FAST_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_WIDTH = 128  # registers: a (BM, 128) fp32 accumulator is the most a program holds
#: Tests set this to fill the output with NaN before the kernels run, so an
#: element no kernel writes cannot pass by holding a stale right value.
POISON = False


def interpreting() -> bool:
    """Whether Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def fast_reasons(*, device: torch.device, dtype: torch.dtype, widths: tuple[int, ...]) -> list[str]:
    """Why the fast path cannot run this case (empty when it can). A missing
    triton is not listed: that raises ``Unavailable`` when the path runs."""
    return list(_reasons(torch.device(device).type, dtype, tuple(widths), interpreting()))


@functools.lru_cache(maxsize=None)  # asked on every call: keep it off the launch path
def _reasons(dev: str, dtype: torch.dtype, widths: tuple[int, ...], interp: bool) -> tuple[str, ...]:
    reasons = []
    if dev == "cpu" and not interp:
        reasons.append("impl=fast runs Triton kernels on CUDA; the device is cpu "
                       "(TRITON_INTERPRET=1 runs them, slowly, in Triton's CPU interpreter)")
    elif dev not in ("cpu", "cuda"):
        reasons.append(f"impl=fast runs Triton kernels on CUDA, not on {dev}")
    if dtype not in FAST_DTYPES:
        reasons.append(f"impl=fast runs float16, bfloat16 and float32, not {dtype}")
    elif dtype == torch.bfloat16 and interp:
        # numpy has no bfloat16: the interpreter's tl.dot multiplies the raw 16-bit patterns
        reasons.append("Triton 3.6's CPU interpreter computes bfloat16 tl.dot wrongly (numpy has no bfloat16)")
    if max(widths, default=0) > MAX_WIDTH:
        reasons.append(f"impl=fast handles branch widths up to {MAX_WIDTH} channels, not {max(widths)}")
    return tuple(reasons)


TRITON_NEEDED = (3, 4)  # triton.knobs and triton.language.standard's reductions, which the kernels use


def triton_missing() -> str:
    """Why the Triton kernels cannot run here ('' when they can): triton missing or older than
    3.4, or (compiling for a GPU) no C compiler for Triton's launcher. Looks; imports nothing."""
    return _triton_problem(interpreting())


@functools.lru_cache(maxsize=None)
def _triton_problem(interp: bool) -> str:
    import importlib.metadata
    import importlib.util
    import shutil

    if sys.modules.get("triton") is None:
        try:
            if importlib.util.find_spec("triton") is None:
                return "triton is not installed"
        except (ImportError, ValueError) as e:  # a broken or shadowed package
            return f"triton cannot be found: {e}"
    try:
        version = importlib.metadata.version("triton")
        found = tuple(int(p) for p in version.split("+")[0].split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        version, found = "unknown", TRITON_NEEDED
    if found < TRITON_NEEDED:
        return (f"triton {version} is installed; the fast path needs {'.'.join(map(str, TRITON_NEEDED))} or newer "
                f"(triton.knobs, triton.language.standard reductions)")
    if not interp and not (os.environ.get("CC") or any(shutil.which(c) for c in ("cc", "gcc", "clang"))):
        return "Triton builds its kernel launcher with a C compiler, and none is here (cc, gcc, clang or $CC)"
    return ""


def _load(module_name: str):
    """The Triton kernels module ``module_name`` of this package, compiled or
    interpreted as the environment says now. ``@triton.jit`` fixes that choice
    when the module is imported, so it is reloaded when TRITON_INTERPRET
    changed since (tests flip it)."""
    km = sys.modules.get(f"{__package__}.{module_name}")
    if km is not None and km.INTERPRETED == interpreting():
        return km  # the common case, without the import machinery
    try:
        km = importlib.import_module(f".{module_name}", __package__)
    except Exception as e:  # ImportError, or a triton that fails while importing
        raise Unavailable(f"impl=fast needs triton, which cannot be imported here: {type(e).__name__}: {e}") from None
    if km.INTERPRETED != interpreting():
        km = importlib.reload(km)
    return km


def load_kernels():
    """The forward's Triton kernels (``elfatt_triton``), as ``_load`` says."""
    return _load("elfatt_triton")


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    # The kernels assume channel stride 1; every layout this project makes has it.
    return t if t.stride(-1) == 1 else t.contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a couple of splits, so tests exercise the combine kernel


def taps_first(conv: torch.nn.Conv2d) -> torch.Tensor:
    """The LePE weights as (9, channels), contiguous, so a kernel loads each
    tap's weights as vectors. Cached on the conv, keyed by the weight's
    storage and version counter (an optimizer step bumps it)."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.dtype, w.device)
    cached = getattr(conv, "_elfatt_taps_first", None)
    if cached is None or cached[0] != key:
        cached = (key, w.detach().reshape(w.shape[0], 9).t().contiguous())
        conv._elfatt_taps_first = cached
    return cached[1]


def check_launchable(spec: ElfattSpec, device: torch.device, dtype: torch.dtype, shape, strides) -> None:
    """Unsupported when the kernels cannot take this case (device, dtype, sizes)."""
    B, h, N, d = shape
    reasons = fast_reasons(device=device, dtype=dtype, widths=spec.widths)
    if reasons:
        raise Unsupported("; ".join(reasons))
    if B * h > 65535:
        raise Unsupported(f"impl=fast launches batch*heads={B * h} programs on one grid axis (limit 65535)")
    if N * max(s[2] for s in strides) >= 2**31 or N * h * d >= 2**31:
        raise Unsupported(f"impl=fast indexes tokens in int32; N={N} tokens with these strides overflow it")


def empty(shape, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An output buffer; NaN-filled under POISON, so an element no kernel writes shows."""
    if POISON:
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype or like.dtype)
    return torch.empty(shape, device=like.device, dtype=dtype or like.dtype)


class Workspaces:
    """A plan's persistent scratch bytes, one buffer per stream (calls on one stream are ordered)."""

    __slots__ = ("nbytes", "device", "by_stream")

    def __init__(self, nbytes: int, device: torch.device):
        self.nbytes, self.device, self.by_stream = nbytes, device, {}

    def get(self, stream) -> torch.Tensor | None:
        ws = self.by_stream.get(stream)
        if ws is None and self.nbytes:
            ws = self.by_stream[stream] = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
        return ws


def _launcher(launches: list[Prepared], tuning: Tuning, device: torch.device, info: dict) -> Launcher:
    why = "" if tuning.fast_launch else "off (tuning.fast_launch=false)"
    if interpreting():
        why = "off (interpreter)"
    why = why or fast_launch_reason()
    info["fast_launch"] = why or "on"
    return Launcher(launches, not why, device, info)


class ForwardPlan:
    """One case's forward: its launches, buffer sizes and info, decided once (``forward_plan.build``)."""

    def __init__(self, case: fp.Case, kt, device: torch.device, copies: bool):
        self.case, self.kt, self.copies = case, kt, copies
        launches, self.saved, ws, self.info = fp.build(case, kt)
        self.launcher = _launcher(launches, case.tuning, device, self.info)
        self.ws = Workspaces(ws["bytes"], device)
        self.out_shape = (case.shape[0], case.shape[2], case.shape[1], case.shape[3])
        self.epilogues: dict[tuple, Launcher] = {}  # local=sdpa: per SDPA output strides and form
        self.graphs = GraphReplay() if device.type == "cuda" and not interpreting() else None
        self.graph_info: dict[str, dict] = {}

    def stream(self):
        return self.launcher.stream_of() if self.launcher.stream_of is not None else None

    def run(self, lepe: LepeWeights, q, k, v, stats: dict | None) -> torch.Tensor:
        if self.copies:
            q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
        out = empty(self.out_shape, q)
        saved = None
        if self.case.keep:
            saved = torch.empty(self.saved["bytes"][0], dtype=torch.uint8, device=q.device)
            stats["saved"] = saved
        slots = [q, k, v, out, saved, self.ws.get(self.stream()), lepe.global_taps, lepe.global_bias,
                 lepe.local_taps, lepe.local_bias]
        self.launcher(slots)
        if self.case.tuning.local == "sdpa" and self.case.spec.has_local():
            self._sdpa(slots)
        return out

    def _sdpa(self, slots: list) -> None:
        """The local heads through SDPA on uncopied stripe views, then the LePE epilogue."""
        spec = self.case.spec
        stripes = self.case.hw[0] // spec.block_rows
        views = [spec.split(t)[1] for t in slots[:3]]
        (qb, form), (kb, _), (vb, _) = (_stripe_blocks(t, stripes) for t in views)
        a = _unit_last(sdpa(qb, kb, vb, self.case.tuning.sdpa_impl))
        key = (a.stride(), form)
        ep = self.epilogues.get(key)
        if ep is None:
            br = fp.branches(spec, self.case.shape, self.case.strides)
            launch = fp.epilogue_launch(self.case, br, self.kt, a.stride(), form, len(slots))
            ep = self.epilogues[key] = _launcher([launch], self.case.tuning, a.device, {})
            self.info["local"] = f"sdpa ({form} view) + triton LePE"
        ep(slots + [a])

    def graphed(self, lepe: LepeWeights, q, k, v) -> tuple[torch.Tensor, dict]:
        """The inference forward through ``GraphReplay`` (CUDA), or eagerly with the reason."""
        if self.graphs is None:
            return self.run(lepe, q, k, v, None), self._with_graph("cuda_graph: needs CUDA, ran eagerly")
        weights = (lepe.global_taps, lepe.global_bias, lepe.local_taps, lepe.local_bias)
        key = (q.data_ptr(), k.data_ptr(), v.data_ptr(), *(0 if t is None else t.data_ptr() for t in weights))
        out, how = self.graphs(key, lambda: self.run(lepe, q, k, v, None))
        return out, self._with_graph(how)

    def _with_graph(self, how: str) -> dict:
        info = self.graph_info.get(how)
        if info is None:
            info = self.graph_info[how] = {**self.info, "graph": how}
        return info


def _stripe_blocks(t: torch.Tensor, stripes: int):
    """(B, h, N, D) -> (a 4-D stripe-blocked tensor for SDPA, its form), uncopied
    when the strides allow: form A (B, h*b, L, D), form B (B*b, h, L, D). The
    form says how to address SDPA's result by (batch, stripe, head)."""
    B, h, N, D = t.shape
    L = N // stripes
    try:
        return t.view(B, h * stripes, L, D), "A"
    except RuntimeError:
        pass
    try:  # the layer's layout: batch stride = N * token stride
        return t.view(B, h, stripes, L, D).transpose(1, 2).view(B * stripes, h, L, D), "B"
    except RuntimeError:
        return t.reshape(B, h * stripes, L, D), "A"  # a copy; no layout here needs it


PLANS: OrderedDict = OrderedDict()  # key -> ForwardPlan, least recently used first
MAX_PLANS = 32


def cached(plans: OrderedDict, key: tuple, build):
    """``plans[key]``, built (``build()``) on a miss, least recently used dropped past MAX_PLANS."""
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = build()
        if len(plans) > MAX_PLANS:
            plans.popitem(last=False)
    elif len(plans) > 1:
        plans.move_to_end(key)
    return plan


def case_of(spec: ElfattSpec, shape, strides, hw, dtype, wdtype, tuning: Tuning, keep: bool, sms: int) -> fp.Case:
    return fp.Case(spec, tuple(shape), tuple(tuple(s[:3]) for s in strides), tuple(hw), dtype, wdtype, tuning, keep,
                   sms)


def _build_plan(spec, lepe: LepeWeights, q, k, v, hw, tuning: Tuning, keep: bool) -> ForwardPlan:
    strides = [t.stride() for t in (q, k, v)]
    copies = any(s[3] != 1 for s in strides)
    if copies:  # the kernels need channel stride 1: such inputs are copied on each call
        strides = [_unit_last(t).stride() for t in (q, k, v)]
    check_launchable(spec, q.device, q.dtype, q.shape, strides)
    w = lepe.global_taps if lepe.global_taps is not None else lepe.local_taps
    case = case_of(spec, q.shape, strides, hw, q.dtype, w.dtype, tuning, keep, _sm_count(q.device))
    return ForwardPlan(case, load_kernels(), q.device, copies)


def fast_forward(spec: ElfattSpec, lepe: LepeWeights, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 hw: tuple[int, int], tuning: Tuning = Tuning(), stats: dict | None = None
                 ) -> tuple[torch.Tensor, dict[str, str]]:
    """The fast forward (no autograd): the (B, N, h, d) output buffer and what ran (tiles, launches).
    ``stats`` (a dict): also keep what the fused backward needs in it (``saved``);
    local heads then need ``tuning.local=triton`` (``Tuning.fused_backward``).
    ``tuning.cuda_graph`` (without ``stats``): replay a CUDA graph of the call
    (``graphs.py``; the output is then that graph's static buffer)."""
    w = lepe.global_taps if lepe.global_taps is not None else lepe.local_taps
    keep = stats is not None
    key = (spec, tuning, q.shape, q.stride(), k.stride(), v.stride(), q.dtype, q.device, w.dtype, hw, keep,
           interpreting())
    plan = cached(PLANS, key, lambda: _build_plan(spec, lepe, q, k, v, hw, tuning, keep))
    if tuning.cuda_graph and not keep:
        return plan.graphed(lepe, q, k, v)
    out = plan.run(lepe, q, k, v, stats)
    return out, plan._with_graph("off") if tuning.cuda_graph else plan.info


def case_plan(spec: ElfattSpec, batch: int, hw: tuple[int, int], dtype: torch.dtype, tuning: Tuning = Tuning(),
              sms: int = 132, stats: bool = False, strides=None) -> list[Prepared]:
    """Every launch of one fast forward on the layer's layout (q, k, v: permuted views
    of one (B, N, 3, h, d) tensor), without tensors: for compile checks and launch plans.
    With ``local=sdpa``, the LePE epilogue as it runs after a contiguous SDPA output."""
    h, d = spec.heads, spec.head_dim
    N = hw[0] * hw[1]
    if strides is None:
        strides = [(N * 3 * h * d, d, 3 * h * d, 1)] * 3
    case = case_of(spec, (batch, h, N, d), strides, hw, dtype, dtype, tuning, stats, sms)
    kt = load_kernels()
    launches, _, _, _ = fp.build(case, kt)
    if tuning.local == "sdpa" and spec.has_local():  # the epilogue after SDPA, its output contiguous in form B
        br = fp.branches(spec, case.shape, case.strides)
        L = spec.block_rows * hw[1]
        launches.append(fp.epilogue_launch(case, br, kt, (br.HL * L * br.dl, L * br.dl, br.dl), "B", fp.BL + 1))
    return launches


def saved_views(spec: ElfattSpec, shape, dtype: torch.dtype, saved: torch.Tensor) -> dict[str, torch.Tensor]:
    """The typed parts of a forward's ``saved`` buffer: ctx, kstats, lse (see ``forward_plan``)."""
    br = fp.branches(spec, shape, [(0, 0, 0)] * 3)
    return fp.saved_views(saved, fp.saved_layout(br, dtype))
