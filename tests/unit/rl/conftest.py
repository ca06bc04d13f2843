"""Shared helpers of the RL unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def tiny_puzzle_policy(vocab_size: int, *, num_layers: int, seq_length: int) -> Iterator[tuple[Any, Any]]:
    """A one-process gloo context holding the tiny heterogeneous Puzzle policy (layout-invariant init, seed 3):
    yields ``(model, puzzle_config)``."""
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.runtime.distributed import distributed_context

    torch.set_num_threads(1)
    with distributed_context(seed=3):
        cfg = tiny_puzzle_config(vocab_size, num_layers=num_layers)
        model = build_puzzle_model(cfg, seq_length=seq_length, perform_initialization=False)
        init_weights_layout_invariant_(model, seed=3)
        yield model, cfg
