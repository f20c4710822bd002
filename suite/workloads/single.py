"""What ``op`` and ``layer`` share: one attention module of ``workload.dim``
channels and ``workload.heads`` heads on the token grid of the image
(``resolution`` / ``workload.patch_size``, square or not)."""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import torch

import attentions

from .. import accuracy as acc
from ..config import BadInput, Job, attention_options, grid_of, parse_resolution, setting
from ..device import Precision, available_bytes
from ..records import Col
from .base import Built, Case, Column, Workload, WorkloadSettings, autocast_context, directed, inference

SUMMARY = (
    Column("attention", "variant", ""), Column("res", "resolution", ""), Column("dir", "direction", ""),
    Column("status", "outcome", ""), Column("p50 ms", "latency_ms_p50", ".3f"),
    Column("spread%", "spread", ".0f"), Column("MiB", "peak_mem_mib", ".1f"),
    Column("err/fp64", "error_vs_fp64", ".1e"),
)
COLUMNS = (
    Col("rel_err_vs_exact", doc="output vs float64 exact attention (same weights), batch item 0"),
    Col("rel_err_vs_fp64", doc="output vs the same attention in float64"),
    Col("cos_sim_vs_exact", doc="cosine similarity of the output with exact attention's"),
    Col("grad_rel_err_vs_fp64", doc="bwd / fwd_bwd: the largest gradient error vs float64 (grad_errors)"),
    Col("grad_rel_err_vs_exact", doc="exact attentions: gradients vs float64 exact attention's"),
    Col("grad_errors", "", "JSON: each gradient's relative errors"),
)


@dataclass
class SingleSettings(WorkloadSettings):
    dim: int = setting(768, "channels of the attention layer (ViT-B/16: 768)", ge=1)
    heads: int = setting(12, "heads of the attention layer", ge=1)
    patch_size: int = setting(16, "the token grid is the image size / patch_size", ge=1)


def build_attention(job: Job, hw: tuple[int, int]) -> attentions.Attention:
    """The configured attention for grid ``hw``, or BadInput naming the valid choices."""
    cfg, wl = job.cfg, job.cfg.workload
    try:
        module = attentions.create_attention(cfg.attention.get("name"), wl.dim, wl.heads, **attention_options(cfg))
    except (ValueError, TypeError) as e:
        raise BadInput(str(e)) from None
    invalid = [r.text for r in module.reasons(hw=hw) if r.kind == "invalid"]
    if invalid:
        raise BadInput(invalid[0])
    return module


class SingleAttention(Workload):
    """Base of ``op`` and ``layer``: subclasses define ``inputs``, ``forward`` and ``leaves``."""

    Settings = SingleSettings
    columns = COLUMNS
    summary = SUMMARY
    quality = (("rel_err_vs_exact", "lower"),)
    part = "full"  # what the attention's FLOP and memory answers cover: "attend" (op) or "full"

    def describe(self, job: Job) -> Case:
        wl = job.cfg.workload
        size = parse_resolution(job.cfg.resolution)
        hw = grid_of(size, wl.patch_size)
        torch.manual_seed(job.cfg.seed)  # the weights too: a rerun measures the same module
        facts = {"size": size, "grid": hw, "dim": wl.dim, "heads": wl.heads, "patch_size": wl.patch_size}
        return Case(facts, build_attention(job, hw))

    def reasons(self, case, job, device, precision):
        return [r for r in case.data.reasons(hw=case.facts["grid"], device=device, dtype=precision.compute_dtype,
                                              batch=job.cfg.batch_size) if r.kind != "invalid"]

    def memory_estimate(self, case, job, precision):
        itemsize = torch.empty((), dtype=precision.compute_dtype).element_size()
        return case.data.memory_estimate(job.cfg.batch_size, case.facts["grid"], itemsize, self.part)

    def build(self, case, job, device, precision):
        module, hw, cfg = case.data, case.facts["grid"], job.cfg
        module.to(device=device, dtype=precision.param_dtype).eval()
        torch.manual_seed(cfg.seed)
        inputs = self.inputs(module, cfg.batch_size, hw, device, precision, cfg.seed)
        flops = {"fwd": module.flops(cfg.batch_size, hw, self.part),
                 "bwd": module.backward_flops(cfg.batch_size, hw, self.part)}
        flops["fwd_bwd"] = flops["fwd"] + flops["bwd"]
        if cfg.direction == "fwd":
            fn = self.callable(module, inputs, hw, device, precision)
            return Built(fn, inputs, float(flops["fwd"]), cfg.batch_size)
        d = directed(lambda: self.forward(module, inputs, hw), self.leaves(module, inputs), cfg.direction, device,
                     precision, cfg.seed)
        return Built(d.fn, inputs, float(flops[cfg.direction]), cfg.batch_size,
                     facts={"saved_mib": d.saved_mib}, grad_out=d.grad_out)

    def inputs(self, module, batch: int, hw, device, precision: Precision, seed: int) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def forward(self, module, inputs, hw) -> torch.Tensor:
        """The call this workload times, on ``inputs``."""
        raise NotImplementedError

    def leaves(self, module, inputs) -> list[torch.Tensor]:
        """What the backward differentiates: the inputs (op), the input and every weight (layer)."""
        raise NotImplementedError

    def grad_names(self, module) -> list[str]:
        raise NotImplementedError

    def callable(self, module, inputs, hw, device, precision: Precision):
        return inference(lambda: self.forward(module, inputs, hw), device, precision)

    def extras(self, case, built, out, job, device):
        cfg, hw = job.cfg, case.facts["grid"]
        if not cfg.accuracy:
            return {}, []
        if hw[0] * hw[1] > cfg.accuracy_max_tokens:
            return {}, [f"accuracy skipped: {hw[0] * hw[1]} tokens > accuracy_max_tokens={cfg.accuracy_max_tokens}"]
        if cfg.direction != "fwd":
            return self.gradient_accuracy(case.data, built, hw, self.precision_of(job, device))
        # The module's own float64 copy is as big as the module's call (8 bytes per element).
        need = case.data.memory_estimate(1, hw, 8, self.part)
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
            return acc.accuracy(module, out, inputs, hw, self.part, own)
        except Exception as e:  # noqa: BLE001 - the float64 copy cannot run on this device
            if not attentions.failure_kind(e):
                raise
            cpu_inputs = tuple(t.cpu() for t in inputs)  # evaluate the references on the CPU
            return acc.accuracy(copy.deepcopy(module).cpu(), out.cpu(), cpu_inputs, hw, self.part, own)

    def run_info(self, case):
        return case.data.run_info()

    def gradient_accuracy(self, module, built, hw, precision) -> tuple[dict, list[str]]:
        """Gradients on batch item 0 (inputs, and weights in ``layer``) against the
        same implementation in float64 and, for exact attentions, against float64
        exact attention."""
        n = len(built.inputs)
        first = [t[:1].detach() for t in built.inputs]
        go = built.grad_out[:1]
        names = self.grad_names(module)
        device = first[0].device
        with autocast_context(device, precision):
            got = acc.grads_of(lambda xs: self.forward(module, xs[:n], hw), self.leaves(module, first), go)
        m64 = module.float64_reference()
        first64 = [t.double() for t in first]
        ref = acc.grads_of(lambda xs: self.forward(m64, xs[:n], hw), self.leaves(m64, first64), go.double())
        errors = {"fp64": acc.grad_errors(names, got, ref)}
        notes = []
        if module.exact:
            exact, note = self.exact_grads(module, first64, go.double(), hw)
            if exact is not None:
                errors["exact"] = acc.grad_errors(names, got, exact)
            notes += [note] if note else []
        out = {"grad_rel_err_vs_fp64": max(errors["fp64"].values()), "grad_errors": json.dumps(errors, sort_keys=True)}
        if "exact" in errors:
            out["grad_rel_err_vs_exact"] = max(errors["exact"].values())
        return out, notes

    def exact_grads(self, module, first64, go64, hw) -> tuple[list | None, str]:
        """Float64 exact attention's gradients (names as ``grad_names``; None where it has
        no counterpart), or None and a note when its N x N scores would not fit."""
        tokens = first64[0].shape[-2]
        need = 4 * module.num_heads * tokens * tokens * 8
        if need > 4 * acc.REFERENCE_BUDGET:
            return None, f"exact gradient reference skipped: its scores need {need / 2**30:.2f} GiB"
        return self.exact_reference_grads(module, first64, go64, hw), ""
