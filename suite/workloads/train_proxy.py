"""``train_proxy``: train a model from scratch on a generated task for a
fixed budget of steps and report held-out top-1 (``proxy_data.py``).

Same recipe for every attention: AdamW (lr ``proxy.lr``, weight decay
``proxy.weight_decay``), linear warmup then cosine decay to 0, gradient norm
clipped at ``proxy.grad_clip``, cross-entropy, batches drawn with replacement
from the training split by a seeded generator. ``seed`` fixes the data (train
and test splits from separate streams), the initial weights and the batch
order, so two attentions see the same data in the same order.

The model is the configured one (``model=vit_t`` ...) with the proxy's
overrides: ``proxy.max_blocks`` (blocks per stage, at most) and, for images,
``proxy.patch_size`` (the stem stride; vit_t keeps 192 wide / 3 heads). The
top-level ``resolution`` and ``batch_size`` are not used: ``proxy.image_size``
/ ``proxy.seq_len`` and ``proxy.batch_size`` are. ListOps replaces the image stem with a token embedding plus a learnt
position embedding on the sqrt(seq_len) x sqrt(seq_len) grid (patch 1).

Precision: weights stay float32; ``amp`` / ``fp16`` / ``bf16`` (and ``auto`` on
CUDA) train under autocast to that dtype, with a gradient scaler for fp16.
The row's latency columns are per training step (forward, backward, update),
``throughput_per_s`` is training samples per second.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conditions import Limits, judged
from ..config import BadInput, Job, attention_options, setting
from ..device import Nvml, Precision
from ..measure import Timing
from ..models import Backbone, ModelPlan, TokenStem, build_model, count_params
from ..models.config import ModelConfig
from ..records import Col
from . import proxy_data
from .base import Built, Case, Column, Measured, Workload
from .model import BACKBONE_COLUMNS, model_facts, resolve_plan, stage_reasons
from .registry import register_workload

PROXY_TASKS = ("match", "pathfinder", "listops")


@dataclass
class ProxyConfig:
    """Group ``proxy``: the generated task of this workload."""

    task: str = setting("match", "match, pathfinder or listops (generated data)", choices=PROXY_TASKS)
    patch_size: Optional[int] = setting(4, "image tasks: the stem stride (null keeps the model's)", ge=1)
    max_blocks: Optional[int] = setting(2, "blocks per stage, at most (null keeps the model's depths)", ge=1)
    image_size: int = setting(32, "match / pathfinder: image side in pixels", ge=1)
    seq_len: int = setting(64, "listops: padded length, on a sqrt x sqrt grid (a square number)", ge=1)
    max_depth: int = setting(3, "listops: nesting depth limit", ge=1)
    max_args: int = setting(5, "listops: operands per operator, at most", ge=1)
    train_size: int = setting(6000, "training examples", ge=1)
    test_size: int = setting(1000, "held-out examples", ge=1)
    steps: int = setting(200, "training steps", ge=1)
    batch_size: int = setting(32, "training batch", ge=1)
    lr: float = setting(1e-3, "AdamW peak learning rate", gt=0)
    weight_decay: float = setting(0.05, "AdamW weight decay (not on biases, norms, position embedding)", ge=0)
    warmup_steps: int = setting(30, "linear warmup steps, then cosine decay to 0", ge=0)
    grad_clip: float = setting(1.0, "gradient-norm clip", ge=0)
    eval_batch_size: int = setting(250, "evaluation batch", ge=1)


COLUMNS = BACKBONE_COLUMNS + (
    Col("flops_per_image_analytic", doc="one forward per sample"),
    Col("attn_flops_per_image_analytic"),
    Col("proxy_task", "", "match, pathfinder, listops"),
    Col("proxy_steps", 0),
    Col("proxy_top1", doc="held-out split"),
    Col("proxy_train_loss", doc="mean over the last 10% of steps"),
    Col("proxy_steps_per_s"),
    Col("proxy_wall_s", doc="the whole job: data, training, evaluation"),
    Col("proxy_eval_items", 0),
)

TRAIN_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
SUMMARY = (
    Column("model", "model", ""), Column("attention", "variant", ""), Column("task", "proxy_task", ""),
    Column("res/seq", "resolution", ""), Column("status", "outcome", ""),
    Column("steps/s", "proxy_steps_per_s", ".2f"), Column("loss", "proxy_train_loss", ".3f"),
    Column("top-1", "proxy_top1", ".3f"),
)


def train_precision(name: str, device: torch.device) -> tuple[str, torch.dtype | None]:
    """(name recorded, autocast dtype or None)."""
    if name == "auto":
        name = "amp" if device.type == "cuda" else "fp32"
    if name == "fp32":
        return "fp32", None
    if name == "amp":
        return "amp", torch.float16 if device.type == "cuda" else torch.bfloat16
    return name, TRAIN_DTYPES[name]


def validate(pc: ProxyConfig) -> None:
    """What the schema's per-field rules cannot say."""
    smallest = {"pathfinder": 16, "match": 24}.get(pc.task, 0)
    if pc.image_size < smallest:
        raise BadInput(f"proxy.image_size={pc.image_size} is too small for {pc.task}; valid: {smallest} or more")


def proxy_model_config(mc: ModelConfig, pc: ProxyConfig) -> tuple[ModelConfig, int]:
    """The model config the proxy trains, and the resolution handed to the plan."""
    classes = 10 if pc.task == "listops" else 2
    over = dict(num_classes=classes)
    if pc.max_blocks is not None:
        over["depths"] = [min(d, pc.max_blocks) for d in mc.depths]
    if pc.task == "listops":
        try:
            side = proxy_data.square_side(pc.seq_len)
        except ValueError as e:
            raise BadInput(f"proxy.{e}") from None
        # one token per grid cell: patch 1, and the position table is the grid itself
        over.update(patch_size=1, base_grid=side)
        return dataclasses.replace(mc, **over), side
    if pc.patch_size is not None:
        over["patch_size"] = pc.patch_size
    over["base_grid"] = pc.image_size // over.get("patch_size", mc.patch_size)  # position table = the grid
    return dataclasses.replace(mc, **over), pc.image_size


def make_data(pc: ProxyConfig, seed: int):
    """(train_x, train_y, test_x, test_y); test comes from its own seed stream."""
    if pc.task in ("pathfinder", "match"):
        make = getattr(proxy_data, pc.task)
        tr = make(pc.train_size, pc.image_size, seed * 2 + 0)
        te = make(pc.test_size, pc.image_size, seed * 2 + 1)
    else:
        tr = proxy_data.listops(pc.train_size, pc.seq_len, seed * 2 + 0, pc.max_depth, pc.max_args)
        te = proxy_data.listops(pc.test_size, pc.seq_len, seed * 2 + 1, pc.max_depth, pc.max_args)
    return (*tr, *te)


def build_proxy_model(plan: ModelPlan, pc: ProxyConfig, side: int) -> Backbone:
    model = build_model(plan, in_chans=1)
    if pc.task == "listops":
        model.stem = TokenStem(proxy_data.VOCAB, plan.embed_dim, (side, side))
        nn.init.trunc_normal_(model.stem.pos_embed, std=plan.init_std, a=-2 * plan.init_std, b=2 * plan.init_std)
    return model


def as_input(x: torch.Tensor, task: str, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x if task == "listops" else x.float() * (2.0 / 255.0) - 1.0  # images to [-1, 1]


def lr_at(step: int, pc: ProxyConfig) -> float:
    if step < pc.warmup_steps:
        return pc.lr * (step + 1) / pc.warmup_steps
    t = (step - pc.warmup_steps) / max(1, pc.steps - pc.warmup_steps)
    return pc.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _optimizer(model: Backbone, pc: ProxyConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": pc.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=pc.lr)


def _autocast(device, amp_dtype):
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def train(model: Backbone, xtr, ytr, pc: ProxyConfig, device, amp_dtype, seed: int, progress) -> tuple[list, list]:
    """The training loop: (per-step ms, per-step loss). ``progress(step, loss)`` is told every tenth of the way."""
    model.to(device).train()
    opt = _optimizer(model, pc)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    gen = torch.Generator().manual_seed(seed + 7)
    step_ms, losses = [], []
    every = max(1, pc.steps // 10)
    for step in range(pc.steps):
        idx = torch.randint(0, len(ytr), (pc.batch_size,), generator=gen)
        xb, yb = as_input(xtr[idx], pc.task, device), ytr[idx].to(device)
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, pc)
        with _autocast(device, amp_dtype):
            loss = F.cross_entropy(model(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), pc.grad_clip)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())  # also synchronises, so the step time is real
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"training loss is {losses[-1]} at step {step}")
        if (step + 1) % every == 0 or step + 1 == pc.steps:
            progress(step + 1, losses[-1])
    return step_ms, losses


def evaluate(model: Backbone, xte, yte, pc: ProxyConfig, device, amp_dtype) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), _autocast(device, amp_dtype):
        for i in range(0, len(yte), pc.eval_batch_size):
            logits = model(as_input(xte[i : i + pc.eval_batch_size], pc.task, device))
            correct += int((logits.argmax(-1).cpu() == yte[i : i + pc.eval_batch_size]).sum())
    return correct / len(yte)


def train_and_eval(model: Backbone, data, pc: ProxyConfig, device, amp_dtype, seed: int, progress
                   ) -> tuple[dict, Timing]:
    """The row's proxy columns, and the training steps as a Timing (for the measuring conditions)."""
    xtr, ytr, xte, yte = data
    t_train, cpu0 = time.perf_counter(), time.process_time()
    step_ms, losses = train(model, xtr, ytr, pc, device, amp_dtype, seed, progress)
    train_s, cpu_s = time.perf_counter() - t_train, time.process_time() - cpu0
    tail = losses[-max(1, len(losses) // 10):]
    steps = Timing.of(step_ms, train_s, cpu_s)
    return dict(
        proxy_top1=evaluate(model, xte, yte, pc, device, amp_dtype),
        proxy_eval_items=len(yte),
        proxy_train_loss=sum(tail) / len(tail),
        proxy_steps=pc.steps,
        proxy_steps_per_s=pc.steps / train_s,
        latency_ms_p10=steps.p10_ms,
        latency_ms_p50=steps.p50_ms,
        latency_ms_p90=steps.p90_ms,
        repeats=steps.repeats,
        throughput_per_s=pc.batch_size / (steps.p50_ms / 1e3),
    ), steps


@register_workload
class TrainProxy(Workload):
    name = "train_proxy"
    groups = {"model": ModelConfig, "proxy": ProxyConfig}
    columns = COLUMNS
    summary = SUMMARY
    quality = (("proxy_top1", "higher"),)
    directions = ("fwd",)  # it always trains: forward, backward and update in every step
    facets = ("workload", "proxy_task", "dtype")
    timed = False

    def check(self, cfg):
        if cfg.direction != "fwd":
            raise BadInput(f"direction={cfg.direction} applies to the timed workloads; workload={self.name} "
                           f"always trains (forward, backward and update)")
        validate(cfg.proxy)

    def run_name(self, cfg):
        return f"{self.name}_{cfg.proxy.task}_{cfg.model.name}_{cfg.attention.get('name')}"

    def line(self, row):
        top1 = row.get("proxy_top1")
        head = f"{row.get('variant') or row.get('attention')} {row.get('model')} {row.get('proxy_task')}"
        if row.get("status") == "ok" and isinstance(top1, float) and math.isfinite(top1):
            return f"{head}: top-1 {top1:.3f}"
        return f"{head}: {row.get('status')}"

    def describe(self, job: Job) -> Case:
        mc, pc = job.cfg.model, job.cfg.proxy
        pmc, side = proxy_model_config(mc, pc)
        name = job.cfg.attention.get("name")
        try:
            plan = resolve_plan(pmc, name, attention_options(job.cfg), (side, side))
        except BadInput as e:
            what = f"listops seq_len={pc.seq_len} ({side}x{side} grid)" if pc.task == "listops" \
                else f"{pc.task} image_size={pc.image_size}, proxy.patch_size={pmc.patch_size}"
            raise BadInput(f"{what}: {e}") from None
        size = (pc.seq_len, pc.seq_len) if pc.task == "listops" else (pc.image_size, pc.image_size)
        facts = model_facts(plan, pmc) | dict(size=size, batch_size=pc.batch_size, proxy_task=pc.task)
        torch.manual_seed(job.cfg.seed)
        return Case(facts, build_proxy_model(plan, pc, side))

    def precision_of(self, job, device):
        name, amp = train_precision(job.cfg.precision.name, device)
        return Precision(name, torch.float32, amp or torch.float32, amp is not None)

    def reasons(self, case, job, device, precision):
        return stage_reasons(case.data, device, precision.compute_dtype, job.cfg.proxy.batch_size)

    def build(self, case, job, device, precision):
        started = time.perf_counter()
        fl = case.data.flops(1)
        facts = dict(params=count_params(case.data), flops_per_image_analytic=fl["total"],
                     attn_flops_per_image_analytic=fl["attention"])
        return Built(None, make_data(job.cfg.proxy, job.cfg.seed), facts=facts, started=started)

    def measure(self, case, built, job, device):
        pc = job.cfg.proxy
        amp = self.precision_of(job, device)
        amp_dtype = amp.compute_dtype if amp.autocast else None
        t0 = time.perf_counter()

        def progress(step, loss):
            print(f"[train_proxy] step {step}/{pc.steps} loss {loss:.4f} "
                  f"({time.perf_counter() - t0:.1f} s)", flush=True)

        values = {}

        def loop():  # trained once: a flagged training run is reported, not repeated
            cols, steps = train_and_eval(case.data, built.inputs, pc, device, amp_dtype, job.cfg.seed, progress)
            values.update(cols)
            return steps

        _, conditions = judged(loop, device, Nvml(device), 0, Limits.of(job.cfg))
        values.update(conditions, proxy_wall_s=time.perf_counter() - built.started)  # data, training, evaluation
        return Measured(values, [])

    def run_info(self, case):
        from .model import model_run_info

        return model_run_info(case.data)
