"""Every bad input gets one line naming the value and what is valid, exit code 2, no
traceback, nothing measured and no folder made (the command line is checked
before Hydra runs: suite/cli.py)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from suite import cli

ROOT = Path(__file__).resolve().parents[2]

BAD = [  # (command line, the start of what the one line says after "error: ")
    # choices of every config group, the launcher's too
    ("attention=nope", "attention=nope is not valid; valid choices: agent, cswin"),
    ("precision=fp8", "precision=fp8 is not valid; valid choices: amp, auto, bf16, fp16, fp32"),
    ("workload=nope", "workload=nope is not valid; valid choices: "),
    ("device=tpu", "device=tpu is not valid; valid choices: auto, cpu, cuda"),
    ("model=nope", "model=nope is not valid; valid choices: cswin_t, swin_t, vit_b"),
    ("proxy=nope", "proxy=nope is not valid; valid choices: listops, match, pathfinder"),
    ("experiment=nope", "experiment=nope is not valid; valid choices: fast_elfatt"),
    ("hydra/launcher=nope", "hydra/launcher=nope is not valid; valid choices: basic, local_gpus, slurm_cpu"),
    # resolutions
    ("resolution=abc", "resolution='abc' is not valid; valid: a positive number of pixels (square) or HxW"),
    ("resolution=-224", "resolution='-224' is not valid; valid: a positive number of pixels"),
    ("resolution=0", "resolution='0' is not valid; valid: a positive number of pixels"),
    ("resolution=250", "resolution=250 is not divisible by patch_size=16; valid sizes are multiples of 16"),
    ("resolution=224x250", "resolution=224x250: the width 250 is not divisible by patch_size=16"),
    ("resolution=224x", "resolution='224x' is not valid"),
    ("resolution=${oc.env:HOME}", "resolution='"),
    ("resolution=${evil:x}", "resolution: the value cannot be resolved (Unsupported interpolation type evil)"),
    ("resolution=64,128", "resolution=64,128 is a sweep (several values); to run each one add -m"),
    # types, bounds, and numbers that are not finite
    ("batch_size=1e9", "batch_size=1e9 is not valid; valid: an integer"),
    ("batch_size=0", "batch_size=0 is not valid; valid: a number >= 1"),
    ("batch_size=abc", "batch_size=abc is not valid; valid: an integer"),
    ("seed=abc", "seed=abc is not valid; valid: an integer"),
    ("seed=-1", "seed=-1 is not valid; valid: a number >= 0"),
    ("seed=1180591620717411303424", "seed=1180591620717411303424 is not valid; valid: a number <= 922337"),
    ("warmup=-1", "warmup=-1 is not valid; valid: a number >= 0"),
    ("repeats=-5", "repeats=-5 is not valid; valid: a number >= 0"),
    ("min_time_s=-1", "min_time_s=-1.0 is not valid; valid: a number >= 0"),
    ("min_time_s=nan", "min_time_s=nan is not valid; valid: a finite number"),
    ("noise_pct=nan", "noise_pct=nan is not valid; valid: a finite number"),
    ("noise_pct=0", "noise_pct=0.0 is not valid; valid: a number > 0"),
    ("contention_cores=nan", "contention_cores=nan is not valid; valid: a finite number"),
    ("contention_cores=-1", "contention_cores=-1.0 is not valid; valid: a number > 0"),
    ("load_window_s=inf", "load_window_s=inf is not valid; valid: a finite number"),
    ("memory_limit_mib=nan", "memory_limit_mib=nan is not valid; valid: a finite number"),
    ("memory_limit_mib=-5", "memory_limit_mib=-5.0 is not valid; valid: a number >= 0"),
    ("accuracy_max_tokens=-1", "accuracy_max_tokens=-1 is not valid; valid: a number >= 0"),
    ("threads=-1", "threads=-1 is not valid; valid: a number >= 0"),
    ("retries=-1", "retries=-1 is not valid; valid: a number >= 0"),
    ("flush_l2=maybe", "flush_l2=maybe is not valid; valid: true or false"),
    ("accuracy=maybe", "accuracy=maybe is not valid; valid: true or false"),
    ("direction=sideways", "direction='sideways' is not valid; valid choices: fwd, bwd, fwd_bwd"),
    ("timing=fast", "timing='fast' is not valid; valid choices: eager, cuda_graph, kernels"),
    ("resume=maybe", "resume='maybe' is not valid; valid choices: false, true, trusted"),
    # keys that do not exist
    ("resolutoin=512", "unknown setting 'resolutoin' (did you mean resolution?)"),
    ("+resolutoin=512", "unknown setting 'resolutoin' (did you mean resolution?)"),
    ("model.depthz=3", "unknown setting 'model.depthz' (did you mean model.depths?)"),
    ("workload.dimm=3", "unknown setting 'workload.dimm' (did you mean workload.dim?)"),
    ("attention.foo=1", "attention 'elfatt' has no option 'foo'; valid options: block_rows, global_heads"),
    ("attention=sdpa_flash attention.foo=1", "attention 'sdpa' has no option 'foo'; valid options: impl, lepe"),
    ("task=train_proxy", "task=train_proxy was removed; choose a workload instead"),
    ("variant=sdpa_flash", "variant= was removed: a preset is an attention option now"),
    ("~attention", "attention is not set; choose one"),
    # the workload's own settings
    ("workload.dim=0", "workload.dim=0 is not valid; valid: a number >= 1"),
    ("workload.heads=5", "heads=5 does not divide dim=768; valid heads for dim=768"),
    ("workload.heads=0", "workload.heads=0 is not valid; valid: a number >= 1"),
    ("workload.patch_size=0", "workload.patch_size=0 is not valid; valid: a number >= 1"),
    # attention options
    ("attention.qkv_bias=maybe", "attention.qkv_bias='maybe' is not valid for 'elfatt'; valid: true or false"),
    ("attention.block_rows=abc", "attention.block_rows='abc' is not valid for 'elfatt'; valid: an integer or null"),
    ("attention.block_rows=5", "block_rows=5 does not divide the grid height H=14; valid block_rows: [1, 2, 7, 14]"),
    ("attention.impl=${oc.env:NO_SUCH_VAR}", "attention.impl: the value cannot be resolved"),
    ("attention.impl=warp", "unknown ELFATT impl 'warp'; valid impls: auto, reference, fast"),
    ("attention=swin attention.window=0", "window=0 is invalid; valid windows: integers >= 1"),
    ("attention=neighborhood attention.kernel=4", "kernel=4 must be odd; valid kernels: odd integers >= 1"),
    ("attention=cswin resolution=512", "stripe=7 does not divide the grid (H, W)=(32, 32)"),
    # models and proxies
    ("workload=model model.name=../../x", "model.name='../../x' is not valid; valid: a name of letters, digits"),
    ("workload=model model.arch=convnet", "model.arch='convnet' is not valid; valid choices: vit, swin, cswin"),
    ("workload=model model.weights=/nonexistent.pth", "model.weights=/nonexistent.pth: no such file"),
    ("workload=model resolution=100", "model=vit_b attention=elfatt: resolution=100 is not a multiple of 16"),
    ("workload=model model.depths=[2,2] model.heads=[3]", "model=vit_b attention=elfatt: model vit_b: depths (2)"),
    ("workload=train_proxy proxy.task=mnist", "proxy.task='mnist' is not valid; valid choices: match, pathfinder"),
    ("workload=train_proxy direction=bwd", "direction=bwd applies to the timed workloads"),
    ("workload=train_proxy proxy=listops proxy.seq_len=50", "proxy.seq_len=50 is not a square number"),
    # the machine and the folders Hydra writes
    ("device=cuda", "device=cuda but torch sees no CUDA device here; valid choices on this machine: auto, cpu"),
    ("hydra.run.dir=/dev/null", "/dev/null: /dev/null exists and is not a folder"),
    ("hydra.run.dir=", "hydra.run.dir is empty; give a folder"),
    ("hydra.run.dir=/proc/suite", "/proc/suite cannot be created or written"),
    ("records_dir=/proc/suite", "records_dir=/proc/suite cannot be created or written"),
    ("records_dir=/dev/null/x", "records_dir=/dev/null/x: /dev/null exists and is not a folder"),
    # the shape of an override: name=value
    ("elfatt", "'elfatt' is not name=value; write e.g. attention=elfatt"),
    ("=elfatt", "'=elfatt' is not name=value"),
    # sweeps: a value bad for every job stops the command before any job runs
    ("-m device=cuda resolution=64,128", "device=cuda but torch sees no CUDA device here"),
    ("-m resolution=64,128 workload.heads=5", "heads=5 does not divide dim=768"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may appear here
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as stop:
        cli.preflight(args.split(" "))
    assert stop.value.code == 2
    text = err.getvalue()
    assert text.startswith(f"error: {message}") and len(text.strip().splitlines()) == 1, text
    assert list(tmp_path.iterdir()) == []


def test_the_table_is_long_enough():
    assert len(BAD) >= 60 and len({a for a, _ in BAD}) == len(BAD)


@pytest.mark.slow
@pytest.mark.parametrize("args", ["attention=nope", "device=cuda", "resolution=64,128", "seed=nan",
                                  "hydra.run.dir=/dev/null/x", "-m device=cuda resolution=64,128"])
def test_run_py_says_one_line_and_makes_no_folder(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(ROOT / "run.py"), *args.split(" ")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and len(p.stderr.strip().splitlines()) == 1
    assert "Traceback" not in p.stderr and p.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("state,says", [
    ({"pos_embed": [1, 2, 3]}, "entry 'pos_embed' is a list, not a tensor"),
    ({"patch_embed.proj.weight": "weights"}, "is a str, not a tensor"),
    ({"pos_embed": __import__("torch").zeros(4, dtype=__import__("torch").complex64)}, "is torch.complex64"),
])
def test_a_bad_state_dict_is_one_line(state, says, tmp_path):
    import torch

    torch.save(state, tmp_path / "w.pth")
    err = io.StringIO()
    with redirect_stderr(err), pytest.raises(SystemExit) as stop:
        cli.preflight(["workload=model", "model=vit_t", f"model.weights={tmp_path / 'w.pth'}"])
    assert stop.value.code == 2 and says in err.getvalue() and len(err.getvalue().strip().splitlines()) == 1


def test_a_one_dimensional_position_embedding_is_not_loaded_and_says_why(tmp_path):
    import torch

    from suite.models import build_model, plan_model
    from suite.models.config import ModelConfig
    from suite.models.weights import load_timm_weights

    model = build_model(plan_model(ModelConfig(name="vit_t", embed_dim=24, depths=[1], heads=[3]), "sdpa", {}, 64))
    loaded = load_timm_weights(model, {"pos_embed": torch.zeros(7)})
    assert loaded.loaded == [] and "pos_embed (shape (7,), here (1, 196, 24))" in loaded.unused
