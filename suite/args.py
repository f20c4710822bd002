"""Argument parsers of the suite's tools (``python -m suite.compare`` and the
others): a wrong argument is one line, ``error: ...`` naming it and how to see
the usage, exit code 2, as for run.py; argparse alone prints its usage first."""
import argparse
import sys


class OneLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line."""

    def error(self, message: str):
        print(f"error: {message}; {self.prog} --help shows the usage", file=sys.stderr, flush=True)
        raise SystemExit(2)
