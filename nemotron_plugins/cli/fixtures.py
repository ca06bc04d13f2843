"""``nemotron-plugins fixtures``: real-format inputs for CPU end-to-end runs.

``fixtures write DIR [--seed N]`` writes a small nemotron-nas checkpoint directory (every block kind, ~17M
parameters, a byte-level BPE tokenizer with the Llama-3 special tokens, generation config) and
Post-Training-Dataset rows (SFT per category as JSONL and parquet, RL prompts with ground truth and reward), and
prints the paths as JSON (see :mod:`nemotron_plugins.fixtures`).
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fixtures`` group."""
    parser = subparsers.add_parser("fixtures", help="write a small real-format checkpoint, tokenizer and data")
    sub = parser.add_subparsers(dest="fixtures_command", metavar="SUBCOMMAND")
    write = sub.add_parser("write", help="write the fixture checkpoint + tokenizer + data into DIR")
    write.add_argument("dir", help="output directory (created; files of an earlier run are replaced)")
    write.add_argument("--seed", type=int, default=0, help="seed of the weights and data rows (default 0)")
    write.set_defaults(func=run_write)


def run_write(args: argparse.Namespace) -> int:
    """Write the fixtures and print ``fixture.json``'s paths."""
    from nemotron_plugins.fixtures import write_fixtures

    paths = write_fixtures(args.dir, seed=args.seed)
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    print(json.dumps({"root": str(paths.root), "manifest": str(paths.manifest), **manifest}, indent=2))
    return 0
