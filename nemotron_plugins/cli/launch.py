"""``nemotron-plugins launch RECIPE --executor local|slurm [--nodes N] [--dry-run] [key=value ...]`` via NeMo-Run.

``--executor local`` runs the recipe on this machine through NeMo-Run's ``LocalExecutor`` (torchrun when the recipe
has several ranks) and waits for it. ``--executor slurm`` submits an sbatch job through NeMo-Run's
``SlurmExecutor``: one task per node, torchrun with c10d rendezvous on the head node, pyxis container flags.
``--dry-run`` prints the exact sbatch script (or the local command) and submits nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from nemotron_plugins.launch.cli_args import add_overrides_argument, split_remainder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``launch`` command."""
    parser = subparsers.add_parser(
        "launch",
        help="launch a recipe through NeMo-Run (local or Slurm)",
        description="Launch RECIPE through NeMo-Run. Overrides (key=value) and options may come in any order "
        "after RECIPE.",
    )
    parser.add_argument("recipe", help="recipe name (see `recipes list`)")
    add_overrides_argument(parser)
    add_options(parser)
    parser.set_defaults(func=run_launch)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``launch`` (also parsed when they follow the overrides)."""
    parser.add_argument("--executor", choices=("local", "slurm"), default="local", help="where to run (default local)")
    parser.add_argument("--nodes", type=int, help="override cluster.nodes (the world size follows)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the sbatch script / local command; submit nothing"
    )
    parser.add_argument("--skip-validation", action="store_true", help="do not run the pre-launch checks")
    slurm = parser.add_argument_group("slurm")
    slurm.add_argument("--account", default=os.environ.get("SLURM_ACCOUNT", "ACCOUNT"), help="sbatch --account")
    slurm.add_argument("--partition", default=os.environ.get("SLURM_PARTITION"), help="sbatch --partition")
    slurm.add_argument("--time", help="sbatch --time (default: the recipe's cluster.time_limit)")
    slurm.add_argument(
        "--job-dir",
        default=os.environ.get("NEMOTRON_JOB_DIR", "nemo_run_jobs"),
        help="job scripts and logs directory on the cluster",
    )
    slurm.add_argument("--container-image", help="pyxis image (default: the recipe's cluster.container_image)")
    slurm.add_argument(
        "--container-mounts", default="", help="extra pyxis mounts, comma-separated src:dst (added to the recipe's)"
    )
    slurm.add_argument("--ssh-host", help="submit through SSH to this login node (default: sbatch on this machine)")
    slurm.add_argument("--ssh-user", help="SSH user for --ssh-host")
    slurm.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="export in the job (repeatable)"
    )
    slurm.add_argument(
        "--packager", choices=("git", "none"), default="git", help="ship the git HEAD, or rely on the container"
    )


def _env(pairs: list[str]) -> dict[str, str]:
    from nemotron_plugins.cli.common import fail

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--env {pair!r} must look like KEY=VALUE")
        out[key] = value
    return out


def run_launch(args: argparse.Namespace) -> int:
    """Validate, then run locally / submit / print."""
    from nemotron_plugins.cli.common import fail
    from nemotron_plugins.launch.build import UnknownRecipeError, build_recipe
    from nemotron_plugins.launch.overrides import OverrideError
    from nemotron_plugins.launch.validation import parallel_summary, validate_recipe

    split_remainder(args, add_options, "nemotron-plugins launch")
    overrides = list(args.overrides)
    if args.nodes is not None:
        if args.nodes < 1:
            fail(f"--nodes must be >= 1, got {args.nodes}")
        overrides.append(f"cluster.nodes={args.nodes}")
    try:
        config = build_recipe(args.recipe, overrides)
    except (UnknownRecipeError, OverrideError) as exc:
        fail(str(exc))
    if not args.skip_validation:
        report = validate_recipe(config)
        if not report.ok:
            fail(f"recipe {config.name!r} is not valid:\n" + "\n".join(f"  - {e}" for e in report.errors))
        for warning in report.warnings:
            print(f"[nemotron-plugins] warning: {warning}", file=sys.stderr)
    print(f"[nemotron-plugins] {config.name} ({config.task}): {parallel_summary(config)}", file=sys.stderr)

    try:
        import nemo_run  # noqa: F401
    except ImportError as exc:
        fail(f"launch needs NeMo-Run (pip install 'nemotron-plugins[nemo]'): {exc}")
    from nemotron_plugins.launch import nemo_run_launch as nrl

    if args.executor == "local":
        if config.cluster.nodes > 1:
            fail(f"recipe {config.name!r} needs {config.cluster.nodes} nodes; use --executor slurm (or --nodes 1)")
        if args.dry_run:
            print(nrl.local_dry_run(args.recipe, config, overrides))
            return 0
        ok, exp_dir = nrl.run_local(args.recipe, config, overrides, env=_env(args.env))
        print(f"[nemotron-plugins] {'succeeded' if ok else 'FAILED'}; NeMo-Run experiment: {exp_dir}", file=sys.stderr)
        return 0 if ok else 1

    options = nrl.SlurmOptions(
        account=args.account,
        partition=args.partition,
        time=args.time,
        job_dir=args.job_dir,
        container_image=args.container_image,
        container_mounts=[m for m in args.container_mounts.split(",") if m],
        ssh_host=args.ssh_host,
        ssh_user=args.ssh_user,
        env=_env(args.env),
        packager=args.packager,
    )
    if args.dry_run:
        sys.stdout.write(nrl.render_sbatch(args.recipe, config, overrides, options))
        return 0
    exp_id = nrl.submit_slurm(args.recipe, config, overrides, options)
    print(f"[nemotron-plugins] submitted NeMo-Run experiment {exp_id}", file=sys.stderr)
    return 0
