"""What ``op`` and ``layer`` share: one attention module of ``dim`` channels
and ``heads`` heads on the token grid of ``resolution / patch_size``."""
from __future__ import annotations

import copy
import json

import torch

import attentions

from .. import accuracy as acc
from ..config import BadInput, Job, attention_options, check_positive, grid_of
from ..device import Precision, available_bytes
from .base import Built, Case, Column, Workload

SUMMARY = (
    Column("attention", "variant", ""), Column("res", "resolution", "d"),
    Column("status", "outcome", ""), Column("p50 ms", "latency_ms_p50", ".3f"),
    Column("spread%", "spread", ".0f"), Column("MiB", "peak_mem_mib", ".1f"),
    Column("err/fp64", "rel_err_vs_fp64", ".1e"),
)


def build_attention(job: Job, hw: tuple[int, int]) -> attentions.Attention:
    """The configured attention for grid ``hw``, or BadInput naming the valid choices."""
    cfg = job.cfg
    try:
        module = attentions.create_attention(cfg.attention.get("name"), cfg.dim, cfg.heads, **attention_options(cfg))
        module.check_grid(hw)
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    return module


class SingleAttention(Workload):
    """Base of ``op`` and ``layer``: subclasses define ``inputs`` and ``call``."""

    summary = SUMMARY

    def describe(self, job: Job) -> Case:
        check_positive(job.cfg, ("batch_size", "dim", "heads"))
        hw = grid_of(job.cfg.resolution, job.cfg.patch_size)
        torch.manual_seed(job.cfg.seed)  # the weights too: a rerun measures the same module
        return Case({"grid": hw}, build_attention(job, hw))

    def unavailable(self, case, device):
        return case.data.unavailable_reasons(device)

    def unsupported(self, case, job, device, precision):
        return case.data.unsupported_reasons(device=device, dtype=precision.compute_dtype, hw=case.identity["grid"],
                                             batch=job.cfg.batch_size)

    def memory_estimate(self, case, job, precision):
        itemsize = torch.empty((), dtype=precision.compute_dtype).element_size()
        return case.data.memory_estimate(job.cfg.batch_size, case.identity["grid"], itemsize, self.name)

    def build(self, case, job, device, precision):
        module, hw = case.data, case.identity["grid"]
        module.to(device=device, dtype=precision.param_dtype).eval()
        torch.manual_seed(job.cfg.seed)
        inputs = self.inputs(module, job.cfg.batch_size, hw, device, precision, job.cfg.seed)
        fn = self.callable(module, inputs, hw, device, precision)
        return Built(fn, inputs, float(module.flops(job.cfg.batch_size, hw, self.name)), job.cfg.batch_size)

    def inputs(self, module, batch: int, hw, device, precision: Precision, seed: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def callable(self, module, inputs, hw, device, precision: Precision):
        raise NotImplementedError

    def extras(self, case, built, out, job, device):
        cfg, hw = job.cfg, case.identity["grid"]
        if not cfg.accuracy:
            return {}, []
        if hw[0] * hw[1] > cfg.accuracy_max_tokens:
            return {}, [f"accuracy skipped: {hw[0] * hw[1]} tokens > accuracy_max_tokens={cfg.accuracy_max_tokens}"]
        # The module's own float64 copy is as big as the module's call (8 bytes per element).
        need = case.data.memory_estimate(1, hw, 8, self.name)
        have = available_bytes(device)[0]
        own, notes = True, []
        if have and need > 0.8 * have:
            own = False
            notes.append(f"rel_err_vs_fp64 skipped: the float64 copy needs at least {need / 2**30:.2f} GiB, "
                         f"{have / 2**30:.2f} GiB available")
        a = self.accuracy(case.data, out, built.inputs, hw, own)
        return dict(rel_err_vs_exact=a.rel_err_vs_exact, rel_err_vs_fp64=a.rel_err_vs_fp64,
                    cos_sim_vs_exact=a.cos_sim_vs_exact), notes

    def accuracy(self, module, out, inputs, hw, own: bool) -> acc.Accuracy:
        try:
            return acc.accuracy(module, out, inputs, hw, self.name, own)
        except attentions.Unsupported:
            # The float64 copy cannot run on this device (e.g. an SDPA backend
            # pinned to fp16 kernels): evaluate the references on the CPU.
            cpu_inputs = tuple(t.cpu() for t in inputs)
            return acc.accuracy(copy.deepcopy(module).cpu(), out.cpu(), cpu_inputs, hw, self.name, own)

    def run_info(self, case):
        return case.data.run_info()


def run_info_json(info: dict) -> str:
    return json.dumps(info, sort_keys=True) if info else ""
