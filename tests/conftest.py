from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised on conf/ (with the typed schema) for compose() in a test module."""
    from suite.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture
def run_job(hydra_conf):
    """Run one job in-process, as run.py would: ``run_job(overrides, run_dir) -> list[Record]``."""
    from suite.job import make_job, run

    def go(overrides: list[str], run_dir, sweep_dir=None):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
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
