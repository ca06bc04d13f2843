"""``nemotron-plugins plugins list``: what is registered and where it came from."""

from __future__ import annotations

import argparse
import json

from nemotron_plugins.cli.common import fail


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``plugins`` group."""
    parser = subparsers.add_parser("plugins", help="inspect registered plugins")
    sub = parser.add_subparsers(dest="plugins_command", metavar="SUBCOMMAND")
    list_parser = sub.add_parser("list", help="list registered plugins, their targets and sources")
    list_parser.add_argument("--kind", help="only this kind (e.g. rewards, chat_templates)")
    list_parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    list_parser.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    """Print the registered plugins."""
    from nemotron_plugins.registry import REGISTRIES

    if args.kind is not None and args.kind not in REGISTRIES:
        fail(f"unknown plugin kind {args.kind!r}; kinds: {', '.join(sorted(REGISTRIES))}")
    kinds = [args.kind] if args.kind else sorted(REGISTRIES)
    if args.json:
        out = {
            kind: [{"name": e.name, "target": e.target_path, "source": e.source} for e in REGISTRIES[kind].entries()]
            for kind in kinds
        }
        print(json.dumps(out, indent=2))
        return 0
    for kind in kinds:
        registry = REGISTRIES[kind]
        entries = registry.entries()
        print(f"{kind} ({len(entries)}): {registry.description}")
        width = max((len(e.name) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.target_path}  [{e.source}]")
        if not entries:
            print("  (none)")
    return 0
