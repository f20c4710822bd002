"""Optional packages: whether they import here, and if not, the real reason."""
from __future__ import annotations

import functools
import importlib

from .errors import first_line


@functools.lru_cache(maxsize=None)
def import_problem(module: str) -> str | None:
    """None when ``module`` imports, else the real reason it does not.

    Cached per process (tests clear it with ``import_problem.cache_clear()``).
    A broken optional package can raise anything at import, hence the broad catch.
    """
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name and e.name.split(".")[0] != top:
            return f"{top} is installed but its dependency {e.name} is missing (ModuleNotFoundError: {e})"
        return f"{top} is not installed (ModuleNotFoundError: {e})"
    except Exception as e:  # noqa: BLE001 - ImportError, OSError from a bad .so, RuntimeError...
        hint = "; an undefined C++ symbol means it was built for another torch" if "undefined symbol" in str(e) else ""
        return f"{module} is installed but does not import ({type(e).__name__}: {first_line(e)}){hint}"
    return None


def package_version(module: str) -> str:
    return str(getattr(importlib.import_module(module), "__version__", "unknown version"))
