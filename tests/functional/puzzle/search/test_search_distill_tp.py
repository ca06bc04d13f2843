"""Stage 6 at TP2 on gloo: the same losses and the same distilled child as at TP1 (two CPU processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nemotron_plugins.puzzle.hf_checkpoint import read_hf_state_dict
from nemotron_plugins.puzzle.search.distill import DistillSettings, run_distill
from tests.unit.puzzle.search.test_search_distill import _parent_and_child


@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_distill_tp2_matches_tp1(tmp_path: Path, sequence_parallel: bool) -> None:
    torch.set_num_threads(1)
    parent, child = _parent_and_child(tmp_path)
    train = torch.randint(0, 64, (16, 12), generator=torch.Generator().manual_seed(2))
    base = DistillSettings(steps=4, global_batch_size=8, micro_batch_size=4, lr=3e-3, lr_schedule="constant", seed=3)
    one = run_distill(parent, child, train, tmp_path / "tp1", base)
    two = run_distill(
        parent,
        child,
        train,
        tmp_path / "tp2",
        DistillSettings(
            **{
                **{f: getattr(base, f) for f in base.__slots__},
                "tensor_model_parallel_size": 2,
                "sequence_parallel": sequence_parallel,
            }
        ),
        timeout_s=600,
    )
    assert two.layout == "TP2 DP1"
    for a, b in zip(one.losses, two.losses, strict=True):
        for key in ("loss", "kl", "cosine", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(a[key])), (key, a, b)
    assert one.losses[-1]["loss"] < one.losses[0]["loss"]
    w1, w2 = read_hf_state_dict(tmp_path / "tp1"), read_hf_state_dict(tmp_path / "tp2")
    assert set(w1) == set(w2)
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5, msg=name)
