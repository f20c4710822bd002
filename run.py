"""Entry point: ``python run.py attention=elfatt resolution=1024`` (Hydra).

Thin by design: compose the config, hand it to ``suite.job.main``.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from suite.config import register_configs


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> list:
    from suite.job import main as run_job

    return run_job(cfg)


if __name__ == "__main__":
    register_configs()
    main()
