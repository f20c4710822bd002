"""``model``: a whole backbone (``suite/models``) at one resolution.

One row per job with: images/s at the configured batch (``throughput_per_s``),
latency percentiles, peak memory, parameters, analytic and counted FLOPs per
image, and:

- ``attn_latency_share``: 1 - t(identity) / t(model), where t(identity) is the
  same model in the same run with every attention layer replaced by
  ``IdentityMixer``: it returns its (B, N, C) input, so no qkv, core or proj
  runs; LayerNorms, MLPs, stem, merging and head still do. The share of the
  whole attention layers, projections included.
- ``attn_core_latency_share``: 1 - t(value-only) / t(model), every attention
  layer replaced by ``ValueOnly`` (qkv and proj kept, out = proj(v)): the share
  of the mechanism itself. The three variants are timed in interleaved
  rounds (medians), so a drift in machine load hits them alike; on a busy CPU
  a share can still come out slightly negative: noise, not a result.
- fidelity, with the model's random weights (timm init: nearly uniform
  attention maps): each attention layer's output against exact softmax
  attention with the same qkv/proj weights on the same (hooked) input, in
  float64 on image 0 (``fidelity_layer_*``); the final features and a random
  1000-class linear head's top-1 against the same weights with every
  attention layer swapped for exact attention (registry ``sdpa``, qkv/proj
  copied; LePE and any other extra weights dropped), in float32 over
  ``model.fidelity_images`` random images. At random init the exact output
  is close to the mean of v, so a LePE term (default conv init) dominates a
  layer's error: read the layer columns as "how far from exact at init".
  Fidelity that fails (e.g. out of memory) leaves its columns empty and says
  why in ``reason``; the speed columns are kept.

The model defines its widths, heads and patch size: the row records its
stage-1 values (and stage-1 grid and tokens); ``model_info`` has every stage.
Images may be non-square (``resolution=512x2048``): every stage grid must be
whole (each side a multiple of the patch size times 2 per merge), and each
attention says whether its windows fit its stage grid.
"""
from __future__ import annotations

import copy
import json
import math
import statistics

import torch

from ..accuracy import cos_sim, exact_layer_fp64, rel_err
from ..config import BadInput, Job, RunConfig, attention_options, parse_resolution
from ..measure import time_fn
from ..models import (
    Backbone, IdentityMixer, ModelPlan, ValueOnly, blocks_of, build_model, check_plan, count_params, exact_twin,
    model_info, plan_model, replace_attention, stride_of, valid_resolutions,
)
from ..models.config import ModelConfig
from ..models.weights import RULES, load_timm_weights, read_state_dict
from ..records import Col, failure, first_line
from .base import Built, Case, Column, Workload, directed, seeded_randn
from .registry import register_workload

SUMMARY = (
    Column("model", "model", ""), Column("attention", "variant", ""), Column("res", "resolution", ""),
    Column("status", "outcome", ""),
    Column("img/s", "throughput_per_s", ".1f"), Column("attn share", "attn_latency_share", ".2f"),
    Column("feat cos", "fidelity_feat_cos", ".3f"),
)
# Columns this workload and train_proxy (which builds the same backbones) add to the core ones.
BACKBONE_COLUMNS = (
    Col("model", "", "the conf/model/ name"),
    Col("model_weights", "", "the state dict loaded (model.weights); empty: random init"),
    Col("params", 0, "parameters"),
    Col("stage_attentions", "", "attention per stage, '|'-joined"),
    Col("model_info", "", "JSON: per-stage dim/heads/grid/options, position embedding, fallbacks"),
)
COLUMNS = BACKBONE_COLUMNS + (
    Col("flops_per_image_analytic", doc="FLOPs (2 per multiply-add); the papers' GFLOPs are MACs: /2"),
    Col("flops_per_image_counted"),
    Col("attn_flops_per_image_analytic", doc="the attention layers' part (qkv, core, LePE, proj)"),
    Col("latency_ms_p50_attn_identity", doc="attention layers -> identity on (B, N, C)"),
    Col("attn_latency_share", doc="1 - that / latency_ms_p50"),
    Col("attn_core_latency_share", doc="attention core -> v (qkv, proj kept)"),
    Col("fidelity_images", 0),
    Col("fidelity_feat_rel_err", doc="vs the same weights with exact attention everywhere"),
    Col("fidelity_feat_cos"),
    Col("fidelity_top1_agree", doc="random 1000-class head"),
    Col("fidelity_layer_rel_err_mean", doc="each layer vs exact attention on its own input"),
    Col("fidelity_layer_rel_err_max"),
    Col("fidelity_layer_cos_min"),
    Col("fidelity_layers", "", "JSON list of {stage, block, rel_err, cos}"),
)


# -- config -> plan ------------------------------------------------------------------
def _resolution_list(mc: ModelConfig, name: str, opts: dict, upto: int, asked: int) -> str:
    valid = valid_resolutions(mc, name, opts, upto)
    step = stride_of(mc)
    if not valid:
        return ""
    if valid == list(range(step, upto + 1, step)):
        return f"multiples of {step} (e.g. {', '.join(map(str, sorted(sorted(valid, key=lambda r: abs(r - asked))[:2])))})"
    shown = ", ".join(map(str, valid[:16]))
    return shown + (f", ... ({len(valid) - 16} more)" if len(valid) > 16 else "")


def resolve_plan(mc: ModelConfig, name: str, opts: dict, size: tuple[int, int]) -> ModelPlan:
    """The plan, or BadInput naming the valid resolutions when the resolution is the problem."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    try:
        plan = plan_model(mc, name, opts, size)
        check_plan(plan)
        return plan
    except ValueError as e:
        side = max(size)
        upto = max(4 * side, 4 * stride_of(mc)) if mc.patch_size > 0 and mc.depths else 0
        try:
            valid = _resolution_list(mc, name, opts, upto, side) if upto and size[0] == size[1] else ""
        except ValueError:
            valid = ""
        if not valid:
            raise BadInput(f"model={mc.name} attention={name}: {e}") from None
        raise BadInput(f"model={mc.name} attention={name}: {e}; valid resolutions up to {upto}: {valid}") from None


def load_weights(model: Backbone, mc: ModelConfig) -> str:
    """Load ``model.weights`` into ``model``; the note for the row, or BadInput."""
    if mc.arch not in RULES:
        raise BadInput(f"model.weights is given, but arch {mc.arch} has no timm key mapping; valid archs for "
                       f"weights: {', '.join(RULES)}")
    try:
        state = read_state_dict(mc.weights)
    except FileNotFoundError:
        raise BadInput(f"model.weights={mc.weights}: no such file") from None
    except Exception as e:  # noqa: BLE001 - not a state dict, a pickle torch refuses...
        raise BadInput(f"model.weights={mc.weights} cannot be read as a state dict ({first_line(e)})") from None
    loaded = load_timm_weights(model, state)
    if not loaded.loaded:
        raise BadInput(f"model.weights={mc.weights}: no tensor maps onto {mc.name} (is it a timm {mc.arch} model?)")
    return loaded.note(mc.weights)


def model_facts(plan: ModelPlan, mc: ModelConfig) -> dict:
    """The row's columns known before running: the image size, the model's own
    stage-1 grid, width and heads, its name and stages."""
    s0 = plan.stages[0]
    return dict(size=plan.size, grid=s0.grid, patch_size=plan.patch_size, dim=s0.dim, heads=s0.heads,
                model=mc.name, stage_attentions=plan.stage_attentions(),
                model_info=json.dumps(model_info(plan), sort_keys=True))


def stage_reasons(model: Backbone, device, dtype, batch: int) -> list:
    """Every block's attention asked whether it can run here, each answer once, labelled with its stage."""
    from attentions import Reason

    seen, reasons = set(), []
    for sp, _, blk in blocks_of(model):
        for r in blk.attn.reasons(hw=sp.grid, device=device, dtype=dtype, batch=batch):
            if r.kind != "invalid" and (r.kind, r.text) not in seen:
                seen.add((r.kind, r.text))
                reasons.append(Reason(r.kind, f"stage {sp.number}: {r.text}"))
    return reasons


def model_run_info(model: Backbone) -> dict:
    info = {}
    for sp, _, blk in blocks_of(model):
        for k, v in blk.attn.run_info().items():  # the first block's value per stage and key
            info.setdefault(f"stage{sp.number}.{k}", v)
    return info


# -- measurements ----------------------------------------------------------------------
def latency_shares(model: Backbone, fn, device, cfg: RunConfig, rounds: int = 3) -> dict:
    """Time the model as built, with IdentityMixer and with ValueOnly layers,
    interleaved over ``rounds`` rounds (each ``min_time_s / rounds`` long), so a
    drift in machine load hits the three alike; medians of the per-round p50s."""
    originals = [blk.attn for _, _, blk in blocks_of(model)]
    variants = {"full": None, "identity": lambda a: IdentityMixer(), "value_only": ValueOnly}
    p50 = {k: [] for k in variants}
    try:
        for _ in range(rounds):
            for key, make in variants.items():
                for (_, _, blk), a in zip(blocks_of(model), originals):
                    blk.attn = make(a) if make else a
                t = time_fn(fn, device, warmup=1, repeats=cfg.repeats, min_time_s=cfg.min_time_s / rounds,
                            flush_l2=cfg.flush_l2)
                p50[key].append(t.p50_ms)
    finally:
        for (_, _, blk), a in zip(blocks_of(model), originals):
            blk.attn = a
    med = {k: statistics.median(v) for k, v in p50.items()}
    return dict(latency_ms_p50_attn_identity=med["identity"], attn_latency_share=1.0 - med["identity"] / med["full"],
                attn_core_latency_share=1.0 - med["value_only"] / med["full"])


def fidelity(model: Backbone, mc: ModelConfig, size: tuple[int, int], device, seed: int) -> dict:
    """Model vs the same weights with exact attention (module docstring). Leaves ``model`` in float32."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    model.float().eval()
    exact = replace_attention(copy.deepcopy(model), exact_twin).eval()
    n = mc.fidelity_images
    captured: list[tuple] = []

    def hook(module, args, output):
        if len(captured) < len(hooks):  # image 0 of the first chunk only
            captured.append((module, args[0][:1].detach(), tuple(args[1]), output[:1].detach()))

    hooks = [blk.attn.register_forward_hook(hook) for _, _, blk in blocks_of(model)]
    feats, feats_exact = [], []
    try:
        with torch.no_grad():
            for i in range(0, n, 8):
                imgs = seeded_randn((min(8, n - i), 3, *size), seed + 1000 + i, device, torch.float32)
                feats.append(model.forward_features(imgs))
                feats_exact.append(exact.forward_features(imgs))
    finally:
        for h in hooks:
            h.remove()
    f, fe = torch.cat(feats), torch.cat(feats_exact)
    with torch.no_grad():
        agree = (model.head(f).argmax(-1) == exact.head(fe).argmax(-1)).double().mean().item()
    layers, errs, coss = [], [], []
    with torch.no_grad():
        for (sp, i, _), (module, x, hw, out) in zip(blocks_of(model), captured):
            if hw[0] * hw[1] > mc.fidelity_max_tokens:
                continue
            ref = exact_layer_fp64(module, x.double(), hw)
            e, c = rel_err(out, ref), cos_sim(out, ref)
            errs.append(e)
            coss.append(c)
            layers.append({"stage": sp.number, "block": i, "rel_err": round(e, 6), "cos": round(c, 6)})
    return dict(
        fidelity_images=n,
        fidelity_feat_rel_err=rel_err(f, fe),
        fidelity_feat_cos=cos_sim(f, fe),
        fidelity_top1_agree=agree,
        fidelity_layer_rel_err_mean=sum(errs) / len(errs) if errs else math.nan,
        fidelity_layer_rel_err_max=max(errs) if errs else math.nan,
        fidelity_layer_cos_min=min(coss) if coss else math.nan,
        fidelity_layers=json.dumps(layers),
    )


@register_workload
class Model(Workload):
    name = "model"
    groups = {"model": ModelConfig}
    columns = COLUMNS
    summary = SUMMARY
    quality = (("fidelity_top1_agree", "higher"), ("fidelity_feat_cos", "higher"))
    facets = ("workload", "model", "direction", "dtype")
    extras_name = "attention share and fidelity"

    def run_name(self, cfg):
        return "_".join([str(cfg.model.name), str(cfg.attention.get("name")), str(cfg.resolution)]
                        + ([cfg.direction] if cfg.direction != "fwd" else []))

    def line(self, row):
        return f"{row.get('model')}: " + super().line(row)

    def describe(self, job: Job) -> Case:
        mc = job.cfg.model
        size = parse_resolution(job.cfg.resolution)
        plan = resolve_plan(mc, job.cfg.attention.get("name"), attention_options(job.cfg), size)
        torch.manual_seed(job.cfg.seed)
        model, notes = build_model(plan), []
        if mc.weights:
            notes.append(load_weights(model, mc))
        return Case(model_facts(plan, mc) | {"model_weights": mc.weights}, model, notes)

    def reasons(self, case, job, device, precision):
        return stage_reasons(case.data, device, precision.compute_dtype, job.cfg.batch_size)

    def build(self, case, job, device, precision):
        model, batch, direction = case.data, job.cfg.batch_size, job.cfg.direction
        fl = model.flops(batch)
        flops = {"fwd": fl["total"], "bwd": model.backward_flops(batch)}
        flops["fwd_bwd"] = flops["fwd"] + flops["bwd"]
        facts = dict(params=count_params(model), flops_per_image_analytic=flops[direction] / batch,
                     attn_flops_per_image_analytic=fl["attention"] / batch)
        model.to(device=device, dtype=precision.param_dtype).eval()
        images = seeded_randn((batch, 3, *case.facts["size"]), job.cfg.seed + 1, device, precision.param_dtype)
        d = directed(lambda: model(images), list(model.parameters()), direction, device, precision, job.cfg.seed)
        facts["saved_mib"] = d.saved_mib
        return Built(d.fn, (images,), float(flops[direction]), batch, facts, grad_out=d.grad_out)

    def extras(self, case, built, out, job, device):
        model, mc, cfg = case.data, job.cfg.model, job.cfg
        m, notes = {}, []
        if mc.attn_share and cfg.direction == "fwd":
            m.update(latency_shares(model, built.fn, device, cfg))
        elif mc.attn_share:
            notes.append("attention share measured for direction=fwd only")
        if mc.fidelity and cfg.accuracy:
            try:
                m.update(fidelity(model, mc, case.facts["size"], device, cfg.seed))
            except Exception as e:  # noqa: BLE001 - keep the speed measured above; say why fidelity is empty
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                notes.append(f"fidelity not measured: {failure(e, job.run_dir)[1]}")
        return m, notes

    def run_info(self, case):
        return model_run_info(case.data)

    def counted_columns(self, counted: float, job: Job) -> dict:
        return {"flops_per_image_counted": counted / job.cfg.batch_size}
