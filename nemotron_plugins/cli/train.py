"""``nemotron-plugins train RECIPE [key=value ...]``: run a recipe here, in this process or under torchrun.

A recipe whose cluster has one node and one device runs in this process. One node with several devices (GPUs, or
gloo processes for CPU recipes) re-executes itself under ``torchrun --nproc-per-node N``. Under torchrun (or Slurm
via ``launch``), each rank builds the same config from the same recipe name and overrides, so only text crosses
process boundaries. Multi-node recipes are started with ``nemotron-plugins launch`` or ``launchers/*.sbatch``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from nemotron_plugins.launch.cli_args import add_overrides_argument, split_remainder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""
    parser = subparsers.add_parser(
        "train",
        help="run a recipe in this process or under torchrun",
        description="Run RECIPE (see `recipes list`) with dotted key=value overrides.",
    )
    parser.add_argument("recipe", help="recipe name")
    add_overrides_argument(parser)
    add_options(parser)
    parser.set_defaults(func=run_train)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``train`` (also parsed when they follow the overrides)."""
    parser.add_argument(
        "--no-torchrun",
        action="store_true",
        help="never re-execute under torchrun (run this single process even if the recipe wants more ranks)",
    )
    parser.add_argument("--skip-validation", action="store_true", help="do not run the pre-launch checks")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print what would run (config summary, command), then exit"
    )


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(recipe: str, overrides: list[str], nproc: int) -> list[str]:
    """The single-node torchrun command that runs this recipe on ``nproc`` local ranks."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "nemotron_plugins.cli.main",
        "train",
        recipe,
        *overrides,
    ]


def run_train(args: argparse.Namespace) -> int:
    """Build, validate and run the recipe."""
    from nemotron_plugins.cli.common import fail
    from nemotron_plugins.launch.build import UnknownRecipeError, build_recipe
    from nemotron_plugins.launch.dispatch import TrainerUnavailableError, resolve_trainer, run_recipe
    from nemotron_plugins.launch.overrides import OverrideError
    from nemotron_plugins.launch.validation import parallel_summary, validate_recipe

    split_remainder(args, add_options, "nemotron-plugins train")
    try:
        config = build_recipe(args.recipe, args.overrides)
    except (UnknownRecipeError, OverrideError) as exc:
        fail(str(exc))

    rank = int(os.environ.get("RANK", "0"))
    if not args.skip_validation:
        report = validate_recipe(config)
        if not report.ok:
            fail(f"recipe {config.name!r} is not valid:\n" + "\n".join(f"  - {e}" for e in report.errors))
        if rank == 0:
            for warning in report.warnings:
                print(f"[nemotron-plugins] warning: {warning}", file=sys.stderr)

    world = config.world_size
    if _under_torchrun():
        actual = int(os.environ["WORLD_SIZE"])
        if actual != world:
            fail(
                f"torchrun started {actual} ranks but recipe {config.name!r} is sized for {world} "
                f"(cluster.nodes={config.cluster.nodes} x cluster.devices_per_node={config.cluster.devices_per_node}); "
                "pass matching cluster.* overrides"
            )
        command = None
    elif world > 1 and not args.no_torchrun:
        if config.cluster.nodes > 1:
            fail(
                f"recipe {config.name!r} needs {config.cluster.nodes} nodes; start it with "
                f"`nemotron-plugins launch {config.name} --executor slurm` or launchers/train.sbatch"
            )
        command = torchrun_command(args.recipe, list(args.overrides), config.cluster.devices_per_node)
    else:
        command = None

    if rank == 0:
        print(f"[nemotron-plugins] {config.name} ({config.task}): {parallel_summary(config)}", file=sys.stderr)
    if args.dry_run:
        print(shlex.join(command) if command else f"(in process) {config.task} trainer, output {config.output_dir}")
        return 0
    if command is not None:
        os.execv(command[0], command)  # replaces this process; torchrun's ranks come back through run_train

    try:
        resolve_trainer(config.task)
        run_recipe(config)
    except TrainerUnavailableError as exc:
        fail(str(exc), code=3)
    return 0
