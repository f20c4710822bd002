"""Entry point: ``python run.py attention=elfatt resolution=1024`` (Hydra).

Thin by design: compose the config, hand it to ``suite.runner``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from suite.config import BadInput, register_configs


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> list:
    from suite import runner

    hc = HydraConfig.get()
    run_dir = Path(cfg.records_dir or hc.runtime.output_dir)
    try:
        records = runner.run_job(cfg, run_dir)
    except BadInput as e:
        if hc.mode == RunMode.MULTIRUN:
            # In a sweep a bad case is a row, and the other cases go on.
            records = [runner.invalid_record(cfg, str(e))]
            runner.write_records(records, run_dir)
        else:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    except Exception as e:  # noqa: BLE001 - a sweep job that fails outside measuring is a row too
        if hc.mode != RunMode.MULTIRUN:
            raise
        from suite.sweep import failed_record

        records = [failed_record(cfg, e, run_dir)]
        runner.write_records(records, run_dir)
    runner.print_summary(records, run_dir)
    return records  # the sweep callback prints each job's one-line result from these


if __name__ == "__main__":
    register_configs()
    main()
