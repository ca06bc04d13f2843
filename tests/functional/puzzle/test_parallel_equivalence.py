"""TP=2, TP=2 + sequence parallel, PP=2 and an uneven PP=2 reproduce the TP=1 losses of a tiny heterogeneous model.

TP=1 runs in this process (one-process gloo group); the parallel layouts run in two spawned gloo processes. All
use megatron DDP, megatron's Adam with gradient clipping and megatron's (pipelined) forward-backward schedule.
"""

from __future__ import annotations

import puzzle_parallel_training as training
import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gloo / CPU path is what this checks, also on a GPU machine: CUDA hidden here and in the spawned workers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


STEPS = 4
SEED = 7
LAYOUTS = {
    "TP=2": {"tensor_model_parallel_size": 2},
    "TP=2+SP": {"tensor_model_parallel_size": 2, "sequence_parallel": True},
    "PP=2": {"pipeline_model_parallel_size": 2},
    "PP=2 [2, 4]": {"pipeline_model_parallel_size": 2, "pipeline_layout": [2, 4]},
}


def test_tp_and_pp_reproduce_tp1_losses() -> None:
    torch.set_num_threads(1)
    reference = training.train({}, steps=STEPS, seed=SEED)
    assert reference is not None and len(reference) == STEPS
    assert reference[-1] < reference[0] - 0.2, f"TP=1 loss did not fall: {reference}"

    per_rank = run_local_processes(training.parallel_worker, 2, (LAYOUTS, STEPS, SEED), timeout_s=240)
    for name in LAYOUTS:
        reported = [r[name] for r in per_rank if r[name] is not None]
        assert len(reported) == 1, f"{name}: expected losses from exactly one rank, got {reported}"
        torch.testing.assert_close(
            torch.tensor(reported[0]), torch.tensor(reference), rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}"
        )
