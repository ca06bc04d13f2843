"""Tiny SFT runs at a given layout / recompute setting (the worker of test_sft_layouts.py)."""

from __future__ import annotations


def sft_losses(rank: int, out: str, overrides: list[str]) -> dict[int, float]:
    """Run the tiny SFT recipe with ``overrides`` in this process group; its per-step losses."""
    import torch

    from nemotron_plugins.sft.trainer import run_sft
    from tests.run_configs import tiny_sft

    torch.manual_seed(0)
    return run_sft(tiny_sft(out, *overrides)).losses  # the trainer sets up (and tears down) the process group
