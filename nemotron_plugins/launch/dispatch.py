"""Run a recipe in this process: pick the trainer for its task, run a prerequisite stage first when needed.

The trainers are looked up by import string so that this module (and the CLI) import nothing heavy, and so a
missing trainer gives a clear "not available" error instead of an import traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from nemotron_plugins.launch.recipe_config import RecipeConfig, init_stage_output_dir

logger = logging.getLogger(__name__)

TRAINERS: dict[str, str] = {
    "sft": "nemotron_plugins.sft.trainer:run_sft",
    "grpo": "nemotron_plugins.rl.trainer:run_grpo",
    "rloo": "nemotron_plugins.rl.trainer:run_grpo",
    "reward_model": "nemotron_plugins.reward_model.trainer:run_reward_model",
    "rpo": "nemotron_plugins.preference.trainer:run_rpo",
}
"""Task -> ``"module:function"`` taking the :class:`RecipeConfig`."""


class TrainerUnavailableError(RuntimeError):
    """The trainer module for a task is not part of this installation (yet)."""


def resolve_trainer(task: str) -> Any:
    """Import the trainer function for ``task``.

    Raises:
        TrainerUnavailableError: If the trainer's module (or its package) does not exist; import errors *inside*
            an existing trainer module propagate unchanged.
        KeyError: For an unknown task.
    """
    if task not in TRAINERS:
        raise KeyError(f"no trainer for task {task!r}; tasks: {', '.join(TRAINERS)}")
    module_name, _, attr = TRAINERS[task].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise TrainerUnavailableError(
                f"the {task} trainer ({module_name}:{attr}) is not available yet in this installation; "
                "recipes can still be listed, shown, validated and launched with --dry-run"
            ) from exc
        raise
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise TrainerUnavailableError(
            f"{module_name} has no {attr}(); the {task} trainer is not available yet"
        ) from exc


def checkpoint_exists(path: str | None) -> bool:
    """Whether ``path`` holds a complete training checkpoint (a committed distributed checkpoint, or a per-rank
    checkpoint of the runtime's older format)."""
    if not path or not os.path.isdir(path):
        return False
    from nemotron_plugins.runtime.checkpoint import CheckpointError, latest_step
    from nemotron_plugins.training.checkpointing import latest_checkpoint

    if latest_checkpoint(path) is not None:
        return True
    try:
        return latest_step(path) is not None
    except CheckpointError:  # a marker of the distributed format without a complete checkpoint
        return False


def prerequisite(config: RecipeConfig) -> RecipeConfig | None:
    """The ``init_from_recipe`` stage to run first, built with its run directory next to this one; ``None`` if its
    checkpoint is already there (or there is no such stage)."""
    if config.init_from_recipe is None or checkpoint_exists(config.init_checkpoint):
        return None
    from nemotron_plugins.launch.build import build_recipe

    stage_dir = init_stage_output_dir(config)
    stage = build_recipe(config.init_from_recipe, [f"output_dir={stage_dir}"])
    expected = os.path.normpath(config.init_checkpoint or "")
    if os.path.normpath(stage.checkpoint.save_dir or "") != expected:
        raise ValueError(
            f"init_checkpoint={config.init_checkpoint!r} is missing and recipe {config.init_from_recipe!r} would save "
            f"to {stage.checkpoint.save_dir!r} instead; point init_checkpoint at an existing checkpoint"
        )
    return stage


def run_recipe(config: RecipeConfig, *, run_prerequisites: bool = True) -> Any:
    """Run ``config`` with its task's trainer in this process (rank), prerequisite stage first.

    Args:
        config: A resolved recipe config (see :func:`nemotron_plugins.launch.build.build_recipe`).
        run_prerequisites: Run the ``init_from_recipe`` stage when its checkpoint is missing.

    Returns:
        Whatever the trainer returns (e.g. final metrics).

    Raises:
        TrainerUnavailableError: If the task's trainer is not installed.
    """
    trainer = resolve_trainer(config.task)
    if run_prerequisites:
        stage = prerequisite(config)
        if stage is not None:
            print(
                f"[nemotron-plugins] {config.name}: no checkpoint at {config.init_checkpoint}; "
                f"running {stage.name} first (output {stage.output_dir})",
                file=sys.stderr,
                flush=True,
            )
            run_recipe(stage, run_prerequisites=True)
    return trainer(config)
