"""Context parallelism without Transformer Engine: CP=2 on gloo (SDPA attention, K/V all-gathered, megatron's
load-balanced chunks) gives the CP=1 loss and gradients of a tiny heterogeneous model."""

from __future__ import annotations

import context_parallel_worker as cpw
import pytest
import torch

from nemotron_plugins.puzzle.context_parallel import local_positions
from nemotron_plugins.runtime.distributed import run_local_processes

pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path is what this checks"),
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning"),
]

SEED = 5


def test_local_positions_follow_megatron_chunking() -> None:
    """Rank r holds chunks r and 2cp-1-r of 2cp chunks; together the ranks hold every position once."""
    for cp in (2, 4):
        chunks = torch.arange(16).chunk(2 * cp)
        seen = []
        for rank in range(cp):
            mine = local_positions(16 // cp, cp, rank).tolist()
            assert mine == torch.cat([chunks[rank], chunks[2 * cp - 1 - rank]]).tolist()
            seen += mine
        assert sorted(seen) == list(range(16))
    with pytest.raises(ValueError, match="two equal chunks"):
        local_positions(3, 2, 0)


def test_cp2_loss_and_gradients_equal_cp1() -> None:
    torch.set_num_threads(1)
    reference = cpw.loss_and_grads(0, 1, SEED)
    per_rank = run_local_processes(cpw.worker, 2, (2, SEED), timeout_s=240)
    assert [r["local_tokens"] for r in per_rank] == [cpw.SEQ // 2] * 2
    for result in per_rank:
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        assert result["grads"].keys() == reference["grads"].keys()
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(
                result["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )
    # The CP ranks really held different halves: each rank's loss alone is not the whole.
    assert reference["loss"] > 0


def test_cp2_sequence_mean_loss_equals_cp1() -> None:
    """What an RL policy update needs under CP: a per-sequence mean over completion tokens, split over CP ranks with
    the per-sequence token counts summed over the CP group, gives the CP=1 loss and gradients."""
    torch.set_num_threads(1)
    reference = cpw.sequence_mean_loss_and_grads(0, 1, SEED)
    per_rank = run_local_processes(cpw.sequence_mean_worker, 2, (2, SEED), timeout_s=240)
    for result in per_rank:
        assert result["counts"] == reference["counts"] == [55.0, 24.0, 32.0]
        assert result["loss"] == pytest.approx(reference["loss"], rel=1e-6)
        for name, grad in reference["grads"].items():
            torch.testing.assert_close(
                result["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
            )
