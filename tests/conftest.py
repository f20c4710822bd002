from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture
def hydra_conf():
    """Hydra initialised on conf/ (with the typed schema) for compose() in a test."""
    from suite.job import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture
def run_job():
    """Run one job in-process, as run.py would: ``run_job(overrides, run_dir) -> list[Record]``."""
    from suite.job import register_configs
    from suite.job import make_job, run

    register_configs()

    def go(overrides: list[str], run_dir, sweep_dir=None):
        # the CPU-load window (1 s by default) would add a second per case; tests that judge load set it
        if not any(o.startswith("load_window_s=") for o in overrides):
            overrides = [*overrides, "load_window_s=0"]
        GlobalHydra.instance().clear()  # another test may have left Hydra initialised elsewhere, or cleared
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
        GlobalHydra.instance().clear()
        choice = cfg.hydra.runtime.choices.get("attention")
        with open_dict(cfg):
            del cfg["hydra"]
        return run(make_job(cfg, run_dir, choice=choice, overrides=list(overrides), sweep_dir=sweep_dir))

    return go


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
