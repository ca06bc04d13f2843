"""Let ``RECIPE key=value ... --option`` mix options and overrides in any order on the command line.

``argparse`` stops matching positionals at the first option, and the top-level parser (with subparsers) cannot use
``parse_intermixed_args``. So a command declares its overrides as ``argparse.REMAINDER`` and calls
:func:`split_remainder`, which parses the options found among them with a twin parser and returns the rest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    """Add the ``overrides`` remainder (after the recipe positional)."""
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optimizer.lr=1e-6 train_steps=10 (options may follow)",
    )


def split_remainder(
    args: argparse.Namespace, add_options: Callable[[argparse.ArgumentParser], None], prog: str
) -> argparse.Namespace:
    """Parse options that came after the recipe into ``args``; leave only ``key=value`` items in ``args.overrides``.

    Args:
        args: The namespace from the main parser.
        add_options: The function that added the command's options (called on a twin parser).
        prog: Program name for error messages.

    Returns:
        ``args``, updated in place.

    Raises:
        SystemExit: On an unknown option or a bad option value (argparse's usual error, exit code 2).
    """
    twin = argparse.ArgumentParser(prog=prog, add_help=False, argument_default=argparse.SUPPRESS)
    add_options(twin)
    for action in twin._actions:  # only options actually given may overwrite the main parser's values
        action.default = argparse.SUPPRESS
    parsed, rest = twin.parse_known_args(list(args.overrides or []))
    for key, value in vars(parsed).items():
        current = getattr(args, key, None)
        if isinstance(value, list) and isinstance(current, list) and current is not value:
            value = [*current, *value]
        setattr(args, key, value)
    unknown = [item for item in rest if item.startswith("-")]
    if unknown:
        twin.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = rest
    return args
