"""Build a registered recipe with overrides: the one path the CLI, launchers and NeMo-Run use."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

from nemotron_plugins.launch.overrides import OverrideError, apply_overrides
from nemotron_plugins.launch.recipe_config import RecipeConfig, resolve_paths


class UnknownRecipeError(KeyError):
    """No recipe has that name; the message suggests the nearest ones."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def recipe_names() -> list[str]:
    """Registered recipe names, sorted."""
    from nemotron_plugins.registry import RECIPES

    return RECIPES.names()


def build_recipe(name: str, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Call the recipe registered as ``name``, apply ``overrides`` and fill unset run paths.

    Args:
        name: A name from ``RECIPES`` (``nemotron-plugins recipes list``).
        overrides: Dotted ``key=value`` texts (see :mod:`nemotron_plugins.launch.overrides`).

    Returns:
        The resolved config.

    Raises:
        UnknownRecipeError: With the nearest registered names.
        OverrideError: For an unknown key or a badly typed value.
        TypeError: If the registered function does not return a ``RecipeConfig``.
    """
    from nemotron_plugins.registry import RECIPES

    names = RECIPES.names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(names)}"
        raise UnknownRecipeError(f"no recipe named {name!r}; {hint}")
    fn = RECIPES.get(name)
    config = fn()
    if not isinstance(config, RecipeConfig):
        raise TypeError(f"recipe {name!r} ({fn!r}) returned {type(config).__name__}, not a RecipeConfig")
    if config.name != name:
        config.name = name
    apply_overrides(config, overrides, context=f" in recipe {name!r}")
    if config.name != name:
        raise OverrideError(f"'name' cannot be overridden (recipe {name!r})")
    return resolve_paths(config)
