"""The command line, checked before Hydra runs: bad input gets one line
(``error: ...`` naming the value and the valid choices) and exit code 2,
never Hydra's multi-line report or a traceback.

``preflight(argv)`` composes the configs the command would run (every job of
a multirun, up to ``MAX_JOBS``) with the typed settings and checks what can be
checked without measuring: group options, types, unknown keys (with or
without ``+``), out-of-range numbers, attention option names and types, and
the case itself (grid, block rows...) for the cheap workloads. A value Hydra
cannot compose stops the command; a value that is bad for every job stops it
too; a value bad for only some jobs of a sweep is left to become their
``invalid`` rows.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

from .config import BadInput, unknown_key_line

CONF = Path(__file__).resolve().parents[1] / "conf"
MAX_JOBS = 256  # jobs of a multirun checked in full; beyond that, each value once
NO_JOB_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                "--version", "--resolve", "--package", "-p", "--experimental-rerun")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


TYPE_WORDS = {"converted to Integer": "an integer", "converted to Float": "a number",
              "not a valid bool": "true or false", "converted to String": "a string"}


def _task_overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper makes them (a later key replaces an earlier one)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: dict[str, list[str]] = {}
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:  # as typed (1e9 stays 1e9 in messages)
            axes[key] = [o.input_line or f"{key}={o.get_value_element_as_str()}"]
    combos = list(itertools.islice(itertools.product(*axes.values()), MAX_JOBS + 1))
    if len(combos) <= MAX_JOBS:
        return [list(c) for c in combos]
    firsts = [v[0] for v in axes.values()]  # too many: each value once, with the first of the others
    return [[*firsts[:i], value, *firsts[i + 1:]] for i, values in enumerate(axes.values()) for value in values]


def explain(e: Exception, overrides: list[str]) -> str:
    """One line for a Hydra composition error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = " ".join(str(e).split())
    if isinstance(e, OverrideParseException):
        return f"cannot read the override: {text}"
    if isinstance(e, MissingConfigException):
        for o in overrides:
            group, _, value = o.lstrip("+~").partition("=")
            if "/" not in group and "." not in group and (CONF / group).is_dir() and value not in group_options(group):
                return f"{group}={value} is not valid; valid choices: {', '.join(group_options(group))}"
        return text
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None) or ""
    if "not in struct" in str(cause) or "Key '" in str(cause) and "not in" in str(cause):
        if key == "variant":
            return "variant= was removed: a preset is an attention option now, e.g. attention=sdpa_flash"
        from .docs import all_settings

        return unknown_key_line(key or str(cause), [k for k, _, _ in all_settings()])
    value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    first = str(cause).splitlines()[0]
    kind = next((k for word, k in TYPE_WORDS.items() if word in first), None)
    if key and kind:
        return f"{key}={value} is not valid; valid: {kind}"
    return f"{key}={value} is not valid: {' '.join(first.split())}" if key else " ".join(first.split())


def check_job(overrides: list[str], describe: bool) -> str | None:
    """None when this job's settings are valid here, else the one-line reason."""
    from hydra import compose
    from omegaconf import open_dict

    from .job import make_job, workload_of

    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as e:  # noqa: BLE001 - Hydra's errors come in several types
        return "compose:" + explain(e, overrides)
    choice = cfg.hydra.runtime.choices.get("attention")
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        job = make_job(cfg, ".", choice=choice, overrides=overrides)
        if describe:
            workload_of(job.cfg).describe(job)
    except BadInput as e:
        return str(e)
    return None


def preflight(argv: list[str]) -> None:
    """Exit with one line and code 2 when the command line cannot run (module docstring)."""
    if any(a.split("=")[0] in NO_JOB_FLAGS for a in argv):
        return
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .job import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            try:
                jobs = expand(_task_overrides(argv))
            except Exception as e:  # noqa: BLE001 - a malformed override
                fail(explain(e, []))
            problems = [check_job(j, describe=len(jobs) <= 64) for j in jobs]
    finally:
        GlobalHydra.instance().clear()
    composition = next((p for p in problems if p and p.startswith("compose:")), None)
    if composition:
        fail(composition[len("compose:"):])
    if all(problems):
        fail(problems[0])


def fail(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
