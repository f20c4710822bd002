"""The ``model`` workload: a whole backbone (suite/models.py) at one resolution.

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

The top-level ``dim``, ``heads`` and ``patch_size`` are ignored: the model
defines them, and the row records the model's stage-1 values (and stage-1 grid
and tokens); ``model_info`` has every stage.
"""
from __future__ import annotations

import copy
import json
import math
import statistics
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .accuracy import cos_sim, exact_layer_fp64, rel_err
from .config import BadInput
from .device import Precision, dtype_unsupported_reason, environment, resolve_device, resolve_precision
from .measure import peak_memory, sdpa_kernels, time_fn, try_count_flops
from .model_config import ModelConfig
from .models import (
    Backbone, IdentityMixer, ModelPlan, ValueOnly, blocks_of, build_model, check_plan, count_params, exact_twin,
    model_info, plan_model, replace_attention, stride_of, valid_resolutions,
)
from .failures import failure
from .records import Record, write_records
from .runner import attention_options
from .runner import base_fields as base_fields_of_case
from .workloads import autocast_context, seeded_randn


# -- config -> plan ------------------------------------------------------------------
def model_config(cfg: DictConfig) -> ModelConfig:
    node = cfg.get("model")
    if node is None:
        return ModelConfig()
    return ModelConfig(**OmegaConf.to_container(node, resolve=True))


def _resolution_list(mc: ModelConfig, name: str, opts: dict, upto: int, asked: int) -> str:
    valid = valid_resolutions(mc, name, opts, upto)
    step = stride_of(mc)
    if not valid:
        return ""
    if valid == list(range(step, upto + 1, step)):
        return f"multiples of {step} (e.g. {', '.join(map(str, sorted(sorted(valid, key=lambda r: abs(r - asked))[:2])))})"
    shown = ", ".join(map(str, valid[:16]))
    return shown + (f", ... ({len(valid) - 16} more)" if len(valid) > 16 else "")


def resolve_plan(mc: ModelConfig, name: str, opts: dict, resolution: int) -> ModelPlan:
    """The plan, or BadInput naming the valid resolutions when the resolution is the problem."""
    try:
        plan = plan_model(mc, name, opts, resolution)
        check_plan(plan)
        return plan
    except ValueError as e:
        upto = max(4 * resolution, 4 * stride_of(mc)) if mc.patch_size > 0 and mc.depths else 0
        try:
            valid = _resolution_list(mc, name, opts, upto, resolution) if upto else ""
        except ValueError:
            valid = ""
        if not valid:
            raise BadInput(f"model={mc.name} attention={name}: {e}") from None
        raise BadInput(
            f"model={mc.name} attention={name} cannot take resolution={resolution}: {e}; "
            f"valid resolutions up to {upto}: {valid}"
        ) from None


# -- helpers -------------------------------------------------------------------------
def base_fields(cfg: DictConfig, plan: ModelPlan | None, device: torch.device, dtype_name: str, env: dict,
                mc: ModelConfig) -> dict:
    """The row's identifying columns, with the model's own stage-1 grid, width and heads
    (the top-level dim, heads and patch_size do not apply to a model)."""
    s0 = plan.stages[0] if plan else None
    grid = s0.grid if s0 else (0, 0)
    return base_fields_of_case(
        cfg, grid, device, dtype_name, env,
        workload="model" if cfg.task == "measure" else cfg.task,
        patch_size=plan.patch_size if plan else mc.patch_size,
        dim=s0.dim if s0 else mc.embed_dim,
        heads=s0.heads if s0 else (mc.heads[0] if mc.heads else 0),
        model=mc.name,
        stage_attentions=plan.stage_attentions() if plan else "",
        model_info=json.dumps(model_info(plan), sort_keys=True) if plan else "",
    )


def unsupported(model: Backbone, device, precision: Precision, batch: int) -> list[str]:
    reasons = [r for r in [dtype_unsupported_reason(device, precision.compute_dtype)] if r]
    seen = set()
    for sp, _, blk in blocks_of(model):
        for r in blk.attn.unsupported_reasons(device=device, dtype=precision.compute_dtype, hw=sp.grid, batch=batch):
            if r not in seen:
                seen.add(r)
                reasons.append(f"stage {sp.number}: {r}")
    return reasons


def run_info(model: Backbone) -> str:
    info = {}
    for sp, _, blk in blocks_of(model):
        for k, v in blk.attn.run_info().items():  # the first block's value per stage and key
            info.setdefault(f"stage{sp.number}.{k}", v)
    return json.dumps(info, sort_keys=True) if info else ""


# -- measurements ----------------------------------------------------------------------
def latency_shares(model: Backbone, fn, device, cfg, rounds: int = 3) -> dict:
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
                t = time_fn(fn, device, warmup=1, repeats=cfg.repeats, min_time_s=cfg.min_time_s / rounds)
                p50[key].append(t.p50_ms)
    finally:
        for (_, _, blk), a in zip(blocks_of(model), originals):
            blk.attn = a
    med = {k: statistics.median(v) for k, v in p50.items()}
    return dict(latency_ms_p50_attn_identity=med["identity"], attn_latency_share=1.0 - med["identity"] / med["full"],
                attn_core_latency_share=1.0 - med["value_only"] / med["full"])


def fidelity(model: Backbone, mc: ModelConfig, resolution: int, device, seed: int) -> dict:
    """Model vs the same weights with exact attention (module docstring). Leaves ``model`` in float32."""
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
                imgs = seeded_randn((min(8, n - i), 3, resolution, resolution), seed + 1000 + i, device, torch.float32)
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


def measure_model(cfg: DictConfig, mc: ModelConfig, plan: ModelPlan, device, precision: Precision, base: dict,
                  run_dir: Path) -> Record:
    status, reason, m = "ok", "", {}
    batch = cfg.batch_size
    try:
        torch.manual_seed(cfg.seed)
        model = build_model(plan)
        m["params"] = count_params(model)
        fl = model.flops(batch)
        m.update(flops_analytic=float(fl["total"]), flops_per_image_analytic=fl["total"] / batch,
                 attn_flops_per_image_analytic=fl["attention"] / batch)
        missing = sorted({r for _, _, blk in blocks_of(model) for r in blk.attn.unavailable_reasons(device)})
        if missing:
            return Record(**base, status="unavailable", reason="; ".join(missing), **m)
        reasons = unsupported(model, device, precision, batch)
        if reasons:
            return Record(**base, status="unsupported", reason="; ".join(reasons), **m)
        model.to(device=device, dtype=precision.param_dtype).eval()
        images = seeded_randn((batch, 3, cfg.resolution, cfg.resolution), cfg.seed + 1, device, precision.param_dtype)

        def fn():
            with torch.no_grad(), autocast_context(device, precision):
                return model(images)

        out = fn()  # surfaces unsupported / OOM before timing
        if not torch.isfinite(out).all():
            status, reason = "error", "output has non-finite values"
        t = time_fn(fn, device, warmup=cfg.warmup, repeats=cfg.repeats, min_time_s=cfg.min_time_s,
                    flush_l2=cfg.flush_l2)
        m.update(latency_ms_p10=t.p10_ms, latency_ms_p50=t.p50_ms, latency_ms_p90=t.p90_ms, repeats=t.repeats,
                 throughput_per_s=batch / (t.p50_ms / 1e3), tflops_per_s=fl["total"] / (t.p50_ms / 1e3) / 1e12)
        mem = peak_memory(fn, device)
        m.update(peak_mem_mib=mem.peak_mib, peak_extra_mem_mib=mem.extra_mib, mem_method=mem.method)
        if cfg.flops_count:
            counted, note = try_count_flops(fn)
            m.update(flops_counted=counted, flops_per_image_counted=counted / batch)
            if note:
                reason = "; ".join(n for n in [reason, note] if n)
        m.update(sdpa_kernels=",".join(sorted(sdpa_kernels(fn))))
        if mc.attn_share:
            m.update(latency_shares(model, fn, device, cfg))
        m["run_info"] = run_info(model)
        if mc.fidelity and cfg.accuracy:
            del images, out
            try:
                m.update(fidelity(model, mc, cfg.resolution, device, cfg.seed))
            except Exception as e:  # noqa: BLE001 - keep the speed measured above; say why fidelity is empty
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                reason = f"fidelity not measured: {failure(e, run_dir)[1]}"
    except BaseException as e:  # noqa: BLE001 - a failed case is a row, not a lost sweep
        if isinstance(e, KeyboardInterrupt):
            raise
        status, reason = failure(e, run_dir)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Record(**base, status=status, reason=reason, **m)


def run_model_job(cfg: DictConfig, run_dir: Path) -> list[Record]:
    """workload=model: validate, measure, write one row. Raises BadInput on bad settings."""
    mc = model_config(cfg)
    name = cfg.attention.get("name")
    if cfg.batch_size < 1:
        raise BadInput(f"batch_size={cfg.batch_size} must be a positive integer")
    if mc.fidelity_images < 1:
        raise BadInput(f"model.fidelity_images={mc.fidelity_images} must be a positive integer")
    plan = resolve_plan(mc, name, attention_options(cfg), cfg.resolution)
    device = resolve_device(cfg.device.name)
    precision = resolve_precision(cfg.precision.name, device)
    env = environment(device)
    base = base_fields(cfg, plan, device, precision.name, env, mc)
    records = [measure_model(cfg, mc, plan, device, precision, base, run_dir)]
    write_records(records, run_dir)
    return records


# -- summary -----------------------------------------------------------------------------
def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def print_model_summary(records: list[Record], run_dir: Path) -> None:
    """The model / proxy rows as a short table (called by runner.print_summary)."""
    from rich.console import Console
    from rich.table import Table

    r0 = records[0]
    table = Table(title=f"{r0.device_name} ({r0.device}), torch {r0.torch_version}")
    proxy = any(r.proxy_task for r in records)
    if proxy:
        cols = ["model", "attention", "task", "res/seq", "dtype", "status", "steps", "steps/s", "wall s",
                "train loss", "top-1", "params M"]
    else:
        cols = ["model", "attention", "stages", "res", "batch", "dtype", "status", "p50 ms", "img/s",
                "GFLOP/img", "counted", "attn share", "core share", "peak MiB", "params M", "feat cos",
                "top-1 agree", "layer err"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("model", "attention", "stages", "task", "dtype", "status") else "right")
    for r in records:
        if proxy:
            table.add_row(r.model, r.attention, r.proxy_task, str(r.resolution), r.dtype, r.status,
                          str(r.proxy_steps), _fmt(r.proxy_steps_per_s, ".2f"), _fmt(r.proxy_wall_s, ".1f"),
                          _fmt(r.proxy_train_loss, ".3f"), _fmt(r.proxy_top1, ".3f"), _fmt(r.params / 1e6, ".2f"))
        else:
            table.add_row(
                r.model, r.attention, r.stage_attentions, str(r.resolution), str(r.batch_size), r.dtype, r.status,
                _fmt(r.latency_ms_p50, ".2f"), _fmt(r.throughput_per_s, ".1f"),
                _fmt(r.flops_per_image_analytic / 1e9, ".3f"), _fmt(r.flops_per_image_counted / 1e9, ".3f"),
                _fmt(r.attn_latency_share, ".3f"), _fmt(r.attn_core_latency_share, ".3f"),
                _fmt(r.peak_mem_mib, ".1f"), _fmt(r.params / 1e6, ".2f"), _fmt(r.fidelity_feat_cos, ".4f"),
                _fmt(r.fidelity_top1_agree, ".3f"), _fmt(r.fidelity_layer_rel_err_mean, ".2e"),
            )
    console = Console(width=220)
    console.print(table)
    for r in records:
        if r.reason:
            console.print(f"[{r.status}] {r.reason}", markup=False)
    console.print(f"records: {run_dir / 'records.parquet'} and records.csv in {run_dir}", markup=False, soft_wrap=True)
