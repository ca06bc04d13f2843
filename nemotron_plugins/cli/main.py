"""The ``nemotron-plugins`` command.

Each subcommand group lives in its own module of this package and exposes ``add_parser(subparsers)``, which adds
one sub-parser whose ``func`` default runs the command and returns an exit code. Modules are found by name, so a new
group is a new file here. Keep heavy imports (torch, megatron) inside the command functions so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

import nemotron_plugins
from nemotron_plugins import cli as cli_package

_NOT_GROUPS = {"main", "common"}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every subcommand group in ``nemotron_plugins.cli``."""
    parser = argparse.ArgumentParser(
        prog="nemotron-plugins",
        description="Llama-Nemotron training plugins for Megatron-core and NeMo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {nemotron_plugins.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in _NOT_GROUPS:
            continue
        module = importlib.import_module(f"{cli_package.__name__}.{info.name}")
        add_parser = getattr(module, "add_parser", None)
        if add_parser is not None:
            add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        # A group given without its subcommand: show that group's help.
        parser.parse_args([*(argv if argv is not None else sys.argv[1:]), "--help"])
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
