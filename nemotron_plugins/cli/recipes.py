"""``nemotron-plugins recipes list|show|validate``: inspect and check the registered recipes."""

from __future__ import annotations

import argparse
import json

from nemotron_plugins.launch.cli_args import add_overrides_argument, split_remainder


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``recipes`` group."""
    parser = subparsers.add_parser("recipes", help="list, show and validate training recipes")
    sub = parser.add_subparsers(dest="recipes_command", metavar="SUBCOMMAND")

    list_parser = sub.add_parser("list", help="list registered recipes")
    list_parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    list_parser.set_defaults(func=run_list)

    show = sub.add_parser("show", help="print a recipe's resolved config (overrides applied)")
    show.add_argument("recipe", help="recipe name (see `recipes list`)")
    add_overrides_argument(show)
    _show_options(show)
    show.set_defaults(func=run_show)

    validate = sub.add_parser("validate", help="check parallelism, batch sizes and per-GPU memory before launch")
    validate.add_argument("recipes", nargs="*", help="recipe names (default: every registered recipe)")
    validate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)"
    )
    validate.add_argument("--json", action="store_true", help="print one JSON object per recipe")
    validate.set_defaults(func=run_validate)


def _show_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("json", "yaml"), default="json", help="output format (default json)")


def _build(name: str, overrides: list[str]):  # noqa: ANN202 - RecipeConfig, imported lazily
    from nemotron_plugins.cli.common import fail
    from nemotron_plugins.launch.build import UnknownRecipeError, build_recipe
    from nemotron_plugins.launch.overrides import OverrideError

    try:
        return build_recipe(name, overrides)
    except (UnknownRecipeError, OverrideError) as exc:
        fail(str(exc))


def run_list(args: argparse.Namespace) -> int:
    """Print the registered recipes with task and size (recipes are cheap to build: no torch)."""
    from nemotron_plugins.launch.build import build_recipe, recipe_names
    from nemotron_plugins.launch.validation import parallel_summary
    from nemotron_plugins.registry import RECIPES

    rows = []
    for entry in RECIPES.entries():
        try:
            cfg = build_recipe(entry.name)
            rows.append(
                {
                    "name": entry.name,
                    "task": cfg.task,
                    "parallel": parallel_summary(cfg),
                    "description": cfg.description,
                    "target": entry.target_path,
                    "source": entry.source,
                }
            )
        except Exception as exc:  # noqa: BLE001 - a broken third-party recipe must still be listed
            rows.append(
                {
                    "name": entry.name,
                    "task": "?",
                    "parallel": f"(cannot build: {exc})",
                    "description": "",
                    "target": entry.target_path,
                    "source": entry.source,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not recipe_names():
        print("(no recipes registered)")
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['task']:<4}  {r['parallel']}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Print the resolved config."""
    from nemotron_plugins.launch.overrides import render

    split_remainder(args, _show_options, "nemotron-plugins recipes show")
    print(render(_build(args.recipe, args.overrides), args.format).rstrip())
    return 0


def _params(n: int | None) -> str:
    if not n:
        return "? params"
    return f"{n / 1e9:.2f}B params" if n >= 1e9 else f"{n / 1e6:.2f}M params"


def run_validate(args: argparse.Namespace) -> int:
    """Validate recipes; exit 1 when any is invalid."""
    from nemotron_plugins.launch.build import recipe_names
    from nemotron_plugins.launch.validation import parallel_summary, validate_recipe

    names = args.recipes or recipe_names()
    failed = 0
    for name in names:
        cfg = _build(name, args.overrides)
        report = validate_recipe(cfg)
        failed += not report.ok
        if args.json:
            print(
                json.dumps(
                    {
                        "name": name,
                        "ok": report.ok,
                        "errors": report.errors,
                        "warnings": report.warnings,
                        "total_params": report.total_params,
                        "memory": report.memory.to_dict() if report.memory else None,
                    }
                )
            )
            continue
        status = "ok     " if report.ok else "INVALID"
        params = _params(report.total_params)
        print(f"{status} {name}: {parallel_summary(cfg)}; {params}")
        if report.memory is not None:
            print(f"        memory: {report.memory.summary()}")
        for warning in report.warnings:
            print(f"        warning: {warning}")
        for error in report.errors:
            print(f"        error: {error}")
    return 1 if failed else 0
