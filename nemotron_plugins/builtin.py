"""Registers the builtin plugins. Each area declares its own in ``<area>/plugins.py`` with lazy targets."""

from __future__ import annotations

import importlib

BUILTIN_PLUGIN_MODULES = (
    "nemotron_plugins.puzzle.plugins",
    "nemotron_plugins.chat.plugins",
    "nemotron_plugins.curriculum.plugins",
    "nemotron_plugins.rewards.plugins",
    "nemotron_plugins.reward_model.plugins",
    "nemotron_plugins.rl.plugins",
    "recipes.plugins",
)


def register_builtin_plugins() -> None:
    """Call ``register()`` of every builtin plugin module. Cheap: registrations are lazy import strings."""
    for module_name in BUILTIN_PLUGIN_MODULES:
        importlib.import_module(module_name).register()
