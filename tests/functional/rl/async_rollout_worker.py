"""Tiny GRPO runs in one gloo process group, for the async-rollout tests (``run_local_processes`` spawns it)."""

from __future__ import annotations

from typing import Any

import torch


def tiny_runs(rank: int, runs: list[tuple[str, list[str]]]) -> list[list[dict[str, Any]]]:
    """The tiny GRPO recipe once per ``(output_dir, overrides)``, one after the other in this process group; the
    per-step metrics of each run."""
    from nemotron_plugins.rl.trainer import run_grpo
    from tests.run_configs import tiny_grpo

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        return [run_grpo(tiny_grpo(out, *overrides)).history for out, overrides in runs]
    finally:
        torch.distributed.destroy_process_group()
