"""Entry point: ``python run.py attention=elfatt resolution=1024`` (Hydra).

Thin by design: check the command line (one line and exit 2 on bad input),
compose the config, hand it to ``suite.job.main``.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from suite.cli import preflight
from suite.job import register_configs


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> list:
    from suite.job import main as run_job

    return run_job(cfg)


if __name__ == "__main__":
    from suite.job import exit_code, install_signal_handlers, interruption

    install_signal_handlers()  # SIGTERM (a scheduler) is handled like Ctrl-C
    try:
        register_configs()
        preflight(sys.argv[1:])
        main()
    except KeyboardInterrupt as e:  # before or between jobs; a job marks its own case
        print(f"{interruption(e)}; rows written before are kept", file=sys.stderr)
        sys.exit(exit_code(e))
