from pathlib import Path

import pytest
import torch
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def hydra_conf():
    """Hydra initialised on conf/ (with the typed schema) for compose() in a test module."""
    from suite.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is visible to torch on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
