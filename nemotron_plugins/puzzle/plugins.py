"""Builtin plugin registrations for this area: lazy ``"module:attr"`` targets only, no heavy imports."""

from __future__ import annotations

from nemotron_plugins.registry import LAYER_SPECS


def register() -> None:
    """Register this area's builtin plugins."""
    LAYER_SPECS.register("puzzle_local", "nemotron_plugins.puzzle.layer_specs:puzzle_local_layer_spec")
    LAYER_SPECS.register("puzzle_sdpa", "nemotron_plugins.puzzle.layer_specs:puzzle_sdpa_layer_spec")
    LAYER_SPECS.register("puzzle_te", "nemotron_plugins.puzzle.layer_specs:puzzle_te_layer_spec")
