"""Sweeps: resume and skip-before-launch inside a job (``resume.py``), and the
Hydra callback that shows progress and merges the rows at the end (``callbacks.py``)."""
