"""NeMo-Run CLI integration: the ``nemo_run.cli`` entry point exposes ``train`` with one factory per recipe.

With the entry point installed (``[project.entry-points."nemo_run.cli"] nemotron_plugins =
"nemotron_plugins.launch.nemo_run_cli"``), NeMo-Run's own CLI finds the recipes::

    nemo nemotron_plugins train recipe=tiny_puzzle_sft_cpu recipe.train_steps=20 --yes
    nemo nemotron_plugins train recipe=llama_nemotron_ultra_253b_grpo_576gpu_h100_bf16 --dryrun

Each registered recipe (builtin or from a plugin) becomes a factory for the ``recipe`` argument; its
:class:`~nemotron_plugins.launch.recipe_config.RecipeConfig` is turned into a ``run.Config`` tree so NeMo-Run's
dotted overrides (``recipe.optimizer.lr=1e-6``) work on it. Importing this module imports NeMo-Run.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import nemo_run as run

from nemotron_plugins.launch.recipe_config import RecipeConfig, resolve_paths

NAMESPACE = "nemotron_plugins"


def to_run_config(value: Any) -> Any:
    """Convert a config dataclass (recursively) into ``run.Config`` objects NeMo-Run can override and build."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kwargs = {f.name: to_run_config(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return run.Config(type(value), **kwargs)
    if isinstance(value, list):
        return [to_run_config(v) for v in value]
    if isinstance(value, dict):
        return {k: to_run_config(v) for k, v in value.items()}
    return value


def resolve_init_annotations(cls: type, seen: set[type] | None = None) -> None:
    """Give the ``__init__`` of ``cls`` and of every config dataclass it nests real types instead of strings.

    Our modules use ``from __future__ import annotations``, so dataclass ``__init__`` annotations are strings.
    NeMo-Run 0.11's CLI parser reads them from ``inspect.signature`` and cannot resolve builtin names such as
    ``'int'``, failing every ``recipe.train_steps=3`` override. The resolved hints are the same types, so replacing
    the strings changes nothing else.
    """
    seen = set() if seen is None else seen
    if cls in seen or not dataclasses.is_dataclass(cls):
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    init_annotations = cls.__init__.__annotations__
    for name in list(init_annotations):
        if name in hints:
            init_annotations[name] = hints[name]
    for hint in hints.values():
        for candidate in (hint, *typing.get_args(hint)):
            for inner in (candidate, *typing.get_args(candidate)):
                if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                    resolve_init_annotations(inner, seen)


resolve_init_annotations(RecipeConfig)


@run.cli.entrypoint(
    namespace=NAMESPACE, help="Train a nemotron-plugins recipe (recipe=<name>, then recipe.* overrides)"
)
def train(recipe: RecipeConfig) -> None:
    """Validate and run ``recipe`` with its task's trainer in this process (NeMo-Run adds torchrun / Slurm)."""
    from nemotron_plugins.launch.dispatch import run_recipe
    from nemotron_plugins.launch.validation import validate_recipe

    config = resolve_paths(recipe)
    validate_recipe(config).raise_if_invalid()
    run_recipe(config)


def _make_factory(name: str) -> Any:
    def factory() -> run.Config[RecipeConfig]:
        from nemotron_plugins.launch.build import build_recipe

        return to_run_config(build_recipe(name))

    factory.__name__ = name
    factory.__qualname__ = name
    factory.__doc__ = f"The {name!r} recipe as a run.Config."
    return run.cli.factory(factory, target=train, target_arg="recipe", name=name)


def register_factories() -> list[str]:
    """Register one ``recipe=<name>`` factory per registered recipe; returns the names."""
    from nemotron_plugins.registry import RECIPES

    names = RECIPES.names()
    for name in names:
        _make_factory(name)
    return names


RECIPE_FACTORIES = register_factories()
