"""``diffusion``: one denoising step of a diffusers model (``workload.model``:
a UNet2DConditionModel or a DiTTransformer2DModel, random seeded weights or a
local folder) with every self-attention core replaced by the configured
attention (``suite/diffusion/swap.py``); cross-attention stays exact (SDPA).

Inputs (seeded): noisy latents on the latent grid (the image size / 8; the VAE
is not run), timestep ``workload.timestep``, and random text embeddings
(``workload.text_tokens`` tokens; no text encoder runs) or random class labels.
The timed call is the step; the row adds:

- ``swapped_layers`` / ``swapped_grids``: the self-attention layers that ran
  swapped and their grids (heads, head width), as seen while running;
  ``exact_layers``: the cross-attention layers left exact.
- ``flops_analytic``: the step with each swapped core stubbed out, counted by
  FlopCounterMode (convolutions, linears, exact cross-attention), plus each
  swapped core's own formula (``attn_flops_analytic``, ``flops(batch, grid,
  "attend")``). ``flops_counted`` counts the step as it runs (a Triton kernel
  is invisible to the counter).
- ``rel_err_vs_exact`` / ``cos_sim_vs_exact``: the noise prediction against the
  same model with the processors diffusers gave it (exact attention), same
  dtype, device and inputs. ``rel_err_vs_fp64``: against a float64 run of the
  same swapped model (skipped, with a note, on large models: ``fp64_reference``).
  DiT's learned-variance channels are not compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import attentions
from attentions.packages import import_problem

from ..accuracy import cos_sim, rel_err
from ..config import BadInput, Job, attention_options, parse_resolution, setting
from ..diffusion import models as M
from ..diffusion import swap as S
from ..flops import count_flops
from ..records import Col, first_line
from .base import Built, Case, Column, Workload, WorkloadSettings, inference
from .registry import register_workload

SUMMARY = (
    Column("model", "model", ""), Column("attention", "variant", ""), Column("res", "resolution", ""),
    Column("status", "outcome", ""), Column("step ms", "latency_ms_p50", ".1f"), Column("MiB", "peak_mem_mib", ".1f"),
    Column("err/exact", "rel_err_vs_exact", ".1e"),
    Column("err/fp64", "rel_err_vs_fp64", ".1e"),
)
COLUMNS = (
    Col("model", "", "workload.model (the family and shape; a weights folder replaces the shape)"),
    Col("model_class", "", "the diffusers class"),
    Col("model_weights", "", "the local folder loaded (workload.weights); empty: seeded random weights"),
    Col("diffusers_version", ""),
    Col("params", 0, "parameters of the denoiser (the swapped cores' own included)"),
    Col("latent_h", 0), Col("latent_w", 0),
    Col("swapped_layers", 0, "self-attention layers that ran with the configured attention"),
    Col("swapped_grids", "", "their grids, heads and head widths, with counts"),
    Col("exact_layers", 0, "cross-attention layers left exact (diffusers' processor, SDPA)"),
    Col("attn_flops_analytic", doc="the swapped cores' FLOPs, from each attention's own formula"),
    Col("rel_err_vs_exact", doc="noise prediction vs the same model with diffusers' exact processors"),
    Col("cos_sim_vs_exact"),
    Col("rel_err_vs_fp64", doc="noise prediction vs a float64 run of the same swapped model"),
)
CROSS_NOTE = "cross-attention stays exact (diffusers' SDPA processor); self-attention swapped"


@dataclass
class DiffusionSettings(WorkloadSettings):
    model: str = setting("unet_small", "the denoiser: unet_small, dit_small (CPU-sized), unet_sd15 (SD-1.5's UNet), "
                                       "dit_xl2 (DiT-XL/2)", choices=tuple(M.MODELS))
    weights: str = setting("", "a local folder of diffusers weights (save_pretrained; a pipeline folder's unet/ or "
                               "transformer/) for workload.model's family; empty: seeded random weights")
    timestep: int = setting(500, "the denoising step's timestep", ge=0, le=999)
    text_tokens: int = setting(77, "unet: tokens of the random text embedding cross-attention reads", ge=1)
    extra_weights: str = setting("zero", "the swapped attention's own convolutions (ELFATT's LePE, agent's and "
                                         "focused_linear's depthwise conv), which no pretrained model has: zero "
                                         "(weights and biases 0, they add nothing) or random (their seeded init)",
                                 choices=("zero", "random"))
    fp64_reference: str = setting("auto", "rel_err_vs_fp64: auto (models up to 100M parameters whose grids fit "
                                          "accuracy_max_tokens), always or never", identity=False,
                                  choices=("auto", "always", "never"))


@dataclass
class Plan:
    """A described case: the model and its swap (None when diffusers is missing)."""

    denoiser: M.Denoiser
    latent: tuple[int, int]
    problem: str = ""  # why diffusers cannot be used here
    swap: S.Swap | None = None
    inputs: M.StepInputs | None = None
    notes: list = field(default_factory=list)  # for the row's reason, known when described
    late_notes: list = field(default_factory=list)  # known once built (the row gets them with the extras)


def diffusers_problem() -> str:
    """"" when diffusers imports, else the reason (not cached: tests hide the module)."""
    return import_problem.__wrapped__("diffusers") or ""


def make_core(job: Job, keep_extras: bool, extras: list):
    """``make_core(heads, head_dim, grid)``: the configured attention for one layer shape."""
    name, opts = job.cfg.attention.get("name"), attention_options(job.cfg)

    def make(heads: int, head_dim: int, grid) -> torch.nn.Module:
        try:
            core = attentions.create_attention(name, heads * head_dim, heads, **opts)
        except (ValueError, TypeError) as e:
            raise BadInput(str(e)) from None
        invalid = [r.text for r in core.reasons(hw=grid) if r.kind == "invalid"]
        if invalid:
            raise BadInput(f"self-attention grid {grid[0]}x{grid[1]}: {invalid[0]}")
        extras.extend(S.prepare_core(core, keep_extras))
        return core

    return make


def plan_case(job: Job) -> Plan:
    wl, cfg = job.cfg.workload, job.cfg
    try:
        d = M.denoiser(wl.model, wl.weights)
        latent = d.latent_of(parse_resolution(cfg.resolution))
    except M.ModelProblem as e:
        raise BadInput(f"workload.model={wl.model}: {e}") from None
    plan = Plan(d, latent, diffusers_problem())
    if plan.problem:
        return plan
    model = M.build(d, cfg.seed)
    extras: list[str] = []
    torch.manual_seed(cfg.seed)
    plan.swap = S.swap_attention(model, lambda n: M.planned_grid(n, model, d, latent), latent,
                                 make_core(job, wl.extra_weights == "random", extras))
    if not plan.swap.processors:
        raise BadInput(f"workload.model={wl.model}: the model has no self-attention layer to swap")
    convs = any(isinstance(m, torch.nn.Conv2d) for c in plan.swap.cores().values() for m in c.modules())
    if convs:
        plan.notes.append("the attention's own convolutions (no pretrained weights) are "
                          + ("kept at their random init" if wl.extra_weights == "random"
                             else "zeroed: they add nothing (workload.extra_weights=zero)"))
    if extras:
        plan.notes.append(f"other attention parameters at their init: {', '.join(sorted(set(extras)))}")
    plan.notes.append(CROSS_NOTE if plan.swap.cross else "self-attention swapped (no cross-attention layers)")
    if d.folder:
        plan.notes.append(f"weights loaded from {d.folder}")
    return plan


def facts_of(plan: Plan, job: Job, size) -> dict:
    wl = job.cfg.workload
    stride = M.VAE_FACTOR * (int(plan.denoiser.config.get("patch_size", 2)) if plan.denoiser.family == "dit" else 1)
    facts = dict(size=size, grid=(size[0] // stride, size[1] // stride), patch_size=stride, model=wl.model,
                 model_class=M.CLASSES[plan.denoiser.family], model_weights=wl.weights,
                 latent_h=plan.latent[0], latent_w=plan.latent[1])
    if plan.swap is not None:
        import diffusers

        first = next(iter(plan.swap.processors.values()))
        facts.update(dim=first.core.dim, heads=first.core.num_heads, params=M.count_params(plan.swap.model),
                     diffusers_version=diffusers.__version__, exact_layers=len(plan.swap.cross))
    return facts


@register_workload
class Diffusion(Workload):
    name = "diffusion"
    Settings = DiffusionSettings
    columns = COLUMNS
    summary = SUMMARY
    directions = ("fwd",)
    facets = ("workload", "model", "dtype")
    extras_name = "fidelity"

    def run_name(self, cfg):
        return "_".join(["diffusion", str(cfg.workload.model), str(cfg.attention.get("name")), str(cfg.resolution)])

    def line(self, row):
        return f"{row.get('model')}: " + super().line(row)

    def describe(self, job: Job) -> Case:
        size = parse_resolution(job.cfg.resolution)
        plan = plan_case(job)
        return Case(facts_of(plan, job, size), plan, list(plan.notes))

    def reasons(self, case, job, device, precision):
        plan: Plan = case.data
        if plan.problem:
            return [attentions.Reason("unavailable", plan.problem)]
        out, seen = [], set()
        for label, core in plan.swap.cores().items():
            grid = next(p.grid for p in plan.swap.processors.values() if p.core is core)
            for r in core.reasons(hw=grid, device=device, dtype=precision.compute_dtype, batch=job.cfg.batch_size):
                if r.kind != "invalid" and (r.kind, r.text) not in seen:
                    seen.add((r.kind, r.text))
                    out.append(attentions.Reason(r.kind, f"{label}: {r.text}"))
        return out

    def memory_estimate(self, case, job, precision):
        """The weights plus the largest swapped core's own estimate (a lower bound)."""
        plan: Plan = case.data
        if plan.swap is None:
            return None
        itemsize = torch.empty((), dtype=precision.param_dtype).element_size()
        cores = [p.core.memory_estimate(job.cfg.batch_size, p.grid, itemsize, "attend")
                 for p in plan.swap.processors.values()]
        return M.count_params(plan.swap.model) * itemsize + max(cores)

    def build(self, case, job, device, precision):
        plan: Plan = case.data
        cfg, wl = job.cfg, job.cfg.workload
        model = M.moved(plan.swap.model, device, precision.param_dtype)
        x = M.step_inputs(model, plan.denoiser, cfg.batch_size, plan.latent, wl.timestep, wl.text_tokens, cfg.seed)
        plan.inputs = x.to(device, precision.param_dtype)
        family = plan.denoiser.family
        fn = inference(lambda: M.denoise(model, family, plan.inputs), device, precision)
        facts, flops = {}, float("nan")
        if cfg.flops_count:
            try:
                flops, facts["attn_flops_analytic"] = stubbed_flops(plan.swap, fn)
            except Exception as e:  # noqa: BLE001 - a count never costs the measurement
                plan.late_notes.append(f"flops_analytic not counted: {first_line(e)}")
        else:
            plan.late_notes.append("flops_analytic not counted (flops_count=false: the step's non-attention part "
                              "is counted by FlopCounterMode)")
        return Built(fn, (plan.inputs.latents,), flops, cfg.batch_size, facts)

    def extras(self, case, built, out, job, device):
        plan: Plan = case.data
        count, grids = S.grid_summary(plan.swap)
        m, notes = {"swapped_layers": count, "swapped_grids": grids}, list(plan.late_notes)
        if count != len(plan.swap.processors):
            notes.append(f"{len(plan.swap.processors) - count} swapped layers did not run in the step")
        if job.cfg.accuracy:
            try:
                m.update(fidelity(plan, built, out, job, notes))
            except Exception as e:  # noqa: BLE001 - keep what was measured; say why fidelity is empty
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                notes.append(f"fidelity not measured: {first_line(e)}")
        return m, notes

    def run_info(self, case):
        plan: Plan = case.data
        info = {f"{label}.impl_ran": c.run_info().get("impl_ran", "") for label, c in plan.swap.cores().items()}
        return info | {"cross_attention": "diffusers default processor (SDPA)" if plan.swap.cross else "none"}


def stubbed_flops(swap: S.Swap, fn) -> tuple[float, float]:
    """(the step's FLOPs, the swapped cores' part): the step counted by FlopCounterMode
    with each core stubbed out, plus each core's analytic FLOPs."""
    with S.stubbed(swap):
        rest = count_flops(fn)
        cores = sum(p.stub_flops for p in swap.processors.values())
    return float(rest + cores), float(cores)


def fidelity(plan: Plan, built: Built, out: torch.Tensor, job: Job, notes: list) -> dict:
    """The noise prediction against diffusers' exact processors and against float64."""
    with S.default_processors(plan.swap):
        exact = built.fn()
    m = {"rel_err_vs_exact": rel_err(out, exact), "cos_sim_vs_exact": cos_sim(out, exact)}
    mode = job.cfg.workload.fp64_reference
    tokens = max(p.grid[0] * p.grid[1] for p in plan.swap.processors.values())
    why = "workload.fp64_reference=never" if mode == "never" else ""
    if mode == "auto":
        why = M.fp64_fits(M.count_params(plan.swap.model), tokens, job.cfg.accuracy_max_tokens)
    if why:
        notes.append(f"rel_err_vs_fp64 skipped: {why}")
        return m
    twin = S.float64_twin(plan.swap)
    x64 = plan.inputs.to(dtype=torch.float64)
    with torch.no_grad():
        ref = M.denoise(twin.model, plan.denoiser.family, x64)
    m["rel_err_vs_fp64"] = rel_err(out, ref)
    return m
