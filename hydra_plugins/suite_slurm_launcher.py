"""Hydra finds launchers only in the ``hydra_plugins`` namespace package (and
imports every module there at start-up): this module makes the suite's Slurm
launcher (``suite/sweep/launcher.py``) one. ``_target_`` of
``conf/hydra/launcher/slurm_cpu.yaml`` and ``slurm_gpus.yaml``. Without
hydra-submitit-launcher (the ``cluster`` extra) it defines nothing, quietly.
"""
try:
    from suite.sweep.launcher import SlurmSweepLauncher as _Launcher
except ImportError:  # no hydra-submitit-launcher / submitit: no Slurm launcher, and no warning at every start
    _Launcher = None

if _Launcher is not None:

    class SlurmSweepLauncher(_Launcher):
        """suite.sweep.launcher.SlurmSweepLauncher, under the name Hydra accepts for a plugin."""
