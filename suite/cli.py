"""The command line, checked before Hydra runs: bad input gets one line
(``error: ...`` naming the value and the valid choices) and exit code 2,
never Hydra's multi-line report or a traceback, and nothing is created.

``preflight(argv)`` composes the configs the command would run (every job of
a multirun, up to ``MAX_JOBS``) with the typed settings and checks what can be
checked without measuring: group options (the launcher's too), types,
unknown keys (with or without ``+``), out-of-range and non-finite numbers,
interpolations that cannot resolve, attention option names and types, the
device, the folders Hydra will write, and the case itself (grid, block
rows...) for the cheap workloads. A sweep written without ``-m`` is refused.
A value Hydra cannot compose stops the command; a value that is bad for every
job stops it too; a value bad for only some jobs of a sweep is left to become
their ``invalid`` rows.
"""
from __future__ import annotations

import itertools
import os
import sys
import tempfile
from pathlib import Path

from .config import BadInput, unknown_key_line

CONF = Path(__file__).resolve().parents[1] / "conf"
MAX_JOBS = 256  # jobs of a multirun checked in full; beyond that, each value once
NO_JOB_FLAGS = ("-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
                "--version", "--resolve", "--package", "-p", "--experimental-rerun")
HYDRA_LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")  # shipped by Hydra and its submitit plugin

TYPE_WORDS = {"converted to Integer": "an integer", "converted to Float": "a number",
              "not a valid bool": "true or false", "converted to String": "a string"}


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _task_overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-") and not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def _hydra_overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-") and a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def parser():
    """Hydra's override parser, with the config loader glob() needs to list a group's options."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    gh = GlobalHydra.instance()
    return OverridesParser.create(config_loader=gh.config_loader() if gh.is_initialized() else None)


def expand(overrides: list[str]) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper makes them (a later key replaces an earlier one)."""
    axes: dict[str, list[str]] = {}
    for o in parser().parse_overrides(overrides):
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
        return f"cannot read the override: {text[:200]}"
    if isinstance(e, MissingConfigException):
        for o in overrides:
            group, _, value = o.lstrip("+~").partition("=")
            if "." not in group and (CONF / group).is_dir() and value not in group_options(group):
                return f"{group}={value} is not valid; valid choices: {', '.join(group_options(group))}"
        return text[:300]
    cause = e.__cause__ or e
    key = getattr(cause, "full_key", None) or ""
    if "not in struct" in str(cause) or "Key '" in str(cause) and "not in" in str(cause):
        if key == "variant":
            return "variant= was removed: a preset is an attention option now, e.g. attention=sdpa_flash"
        if key.startswith("attention."):
            return unknown_option(key, overrides)
        from .docs import all_settings

        return unknown_key_line(key or str(cause), [k for k, _, _ in all_settings()])
    value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key), None)
    first = (str(cause).splitlines() or [type(cause).__name__])[0]
    kind = next((k for word, k in TYPE_WORDS.items() if word in first), None)
    if key and kind:
        return f"{key}={value} is not valid; valid: {kind}"
    if "interpolation" in first.lower() or "resolver" in first.lower():
        return f"{key or 'a setting'}: the value cannot be resolved ({' '.join(first.split())[:160]})"
    return f"{key}={value} is not valid: {' '.join(first.split())[:200]}" if key else " ".join(first.split())[:300]


def unknown_option(key: str, overrides: list[str]) -> str:
    """One line for ``attention.<option>`` that the chosen attention does not take: its options."""
    from hydra import compose

    import attentions

    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        name = str(compose(config_name="config", overrides=rest).attention.name)
        attentions.registry.check_options(name, **{key.split(".", 1)[1]: None})
    except ValueError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - the rest cannot compose either: say what is known
        pass
    return unknown_key_line(key)


def usable_folder(path: str | Path) -> str | None:
    """Why Hydra could not create and write folder ``path`` (None when it can). Tried
    for real, with a temporary folder in the deepest existing ancestor, removed after."""
    p = Path(path).expanduser()
    try:
        probe = p.absolute()
        while not probe.exists():
            if probe.is_symlink():  # a dangling link or a loop
                return f"{path}: {probe} is a symbolic link that does not resolve (a loop or a missing target)"
            probe = probe.parent
        if not probe.is_dir():
            return f"{path}: {probe} exists and is not a folder"
        with tempfile.TemporaryDirectory(dir=probe, prefix=".write-test-") as tmp:
            with open(Path(tmp) / "probe", "wb") as f:  # a full disk refuses data, not always a folder
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        return f"{path} cannot be created or written ({e.strerror or e})"
    return None


def check_job(overrides: list[str], describe: bool, multirun: bool) -> str | None:
    """None when this job's settings are valid here, else the one-line reason
    (``compose:``/``folder:`` first when Hydra itself could not start it)."""
    from hydra import compose
    from omegaconf import open_dict

    from .device import resolve_device
    from .job import make_job, workload_of

    try:
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        folder = str(cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    except Exception as e:  # noqa: BLE001 - Hydra's errors come in several types
        return "compose:" + explain(e, overrides)
    problem = usable_folder(folder)
    if not problem and cfg.get("records_dir"):
        problem = (why := usable_folder(cfg.records_dir)) and f"records_dir={why}"
    if problem:
        return "folder:" + problem
    choice = cfg.hydra.runtime.choices.get("attention")
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        job = make_job(cfg, ".", choice=choice, overrides=overrides)
        resolve_device(job.cfg.device.name)
        if describe:
            workload_of(job.cfg).describe(job)
    except BadInput as e:
        return str(e)
    return None


def hydra_problem(argv: list[str]) -> str | None:
    """The launcher choice and folder overrides, checked before Hydra uses them."""
    for a in _hydra_overrides(argv):
        key, _, value = a.lstrip("+~").partition("=")
        if key == "hydra/launcher":
            valid = sorted(set(group_options("hydra/launcher")) | set(HYDRA_LAUNCHERS))
            if value not in valid:
                return f"hydra/launcher={value} is not valid; valid choices: {', '.join(valid)}"
        if key in ("hydra.run.dir", "hydra.sweep.dir") and not value:
            return f"{key} is empty; give a folder, e.g. {key}=results/my_run"
    return None


def override_shape(task: list[str]) -> str | None:
    """Why an override is not ``name=value`` (None when each is). A name given
    twice is Hydra's rule, kept: the later value wins."""
    for a in task:
        key, eq, _ = a.lstrip("+~").partition("=")
        if not key or (not eq and not a.startswith("~")):
            return (f"{a!r} is not name=value; write e.g. attention=elfatt; "
                    "python run.py --help lists every setting")
    return None


def preflight(argv: list[str]) -> None:
    """Exit with one line and code 2 when the command line cannot run (module docstring)."""
    if any(a.split("=")[0] in NO_JOB_FLAGS for a in argv):
        return
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .job import register_configs

    problem = hydra_problem(argv)
    if problem:
        fail(problem)
    shape = override_shape(_task_overrides(argv))
    if shape:
        fail(shape)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    keep = [a for a in _hydra_overrides(argv) if a.lstrip("+~").startswith(("hydra.searchpath", "hydra.run.dir",
                                                                             "hydra.sweep.dir"))]
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            try:
                task = _task_overrides(argv)
                sweeps = [o.input_line for o in parser().parse_overrides(task) if o.is_sweep_override()]
                if sweeps and not multirun:
                    fail(f"{sweeps[0]} is a sweep (several values); to run each one add -m: python run.py -m ...")
                jobs = expand(task)
            except SystemExit:
                raise
            except Exception as e:  # noqa: BLE001 - a malformed override
                fail(explain(e, []))
            problems = [check_job([*j, *keep], len(jobs) <= 64, multirun) for j in jobs]
    finally:
        GlobalHydra.instance().clear()
    first = next((p for p in problems if p and p.startswith(("compose:", "folder:"))), None)
    if first:
        fail(first.split(":", 1)[1])
    if all(problems):
        fail(problems[0])


def fail(line: str) -> None:
    print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(2)
