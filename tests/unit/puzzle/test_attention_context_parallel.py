"""Context-parallel helpers (no processes): megatron's load-balanced chunking, the batch split a trainer calls,
the K/V gather's global order and the loss reduction, all on one rank's view."""

from __future__ import annotations

import pytest
import torch

from nemotron_plugins.puzzle.context_parallel import (
    ContextParallelError,
    context_parallel_chunk_ids,
    context_parallel_loss,
    local_positions,
    split_batch_for_context_parallel,
)


@pytest.mark.parametrize("cp", [1, 2, 4])
def test_split_follows_megatrons_chunks_and_covers_the_sequence(cp: int) -> None:
    s = 8 * cp
    tokens = torch.arange(2 * s).reshape(2, s)
    sbh = tokens.t().unsqueeze(-1).repeat(1, 1, 3)  # [s, b, h]: megatron's layout, sequence first
    seen = []
    for rank in range(cp):
        part = split_batch_for_context_parallel({"tokens": tokens, "mask": None}, rank, cp)
        assert part["mask"] is None
        assert part["tokens"].shape == (2, s // cp)
        positions = local_positions(s // cp, cp, rank)
        assert torch.equal(part["tokens"], tokens[:, positions])
        chunks = context_parallel_chunk_ids(rank, cp)
        assert chunks == (rank, 2 * cp - 1 - rank)
        seq_first = split_batch_for_context_parallel({"hidden": sbh}, rank, cp, seq_dim=0)["hidden"]
        assert torch.equal(seq_first, sbh[positions])
        seen += positions.tolist()
    assert sorted(seen) == list(range(s))


def test_split_errors_name_the_tensor_and_the_valid_multiple() -> None:
    batch = {"tokens": torch.zeros(2, 8, dtype=torch.long), "labels": torch.zeros(2, 6, dtype=torch.long)}
    with pytest.raises(ContextParallelError, match=r"labels: sequence length 6 .* multiple of 4"):
        split_batch_for_context_parallel(batch, 0, 2)
    with pytest.raises(ContextParallelError, match="cp_rank=2"):
        split_batch_for_context_parallel(batch, 2, 2)


def test_loss_without_context_parallel_is_the_token_mean() -> None:
    class _One:  # a CP group of one: the reduction must be the plain masked token mean
        def size(self) -> int:
            return 1

    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    loss, reported = context_parallel_loss(per_token, mask, group=_One())
    assert loss.item() == pytest.approx(7.0 / 3.0)
    assert reported.item() == pytest.approx(7.0 / 3.0)
    loss.backward()
    torch.testing.assert_close(per_token.grad, torch.tensor([[1.0, 1.0, 0.0, 1.0]]) / 3)
