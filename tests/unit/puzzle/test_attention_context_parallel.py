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


@pytest.mark.parametrize("cp", [2, 4])
def test_packed_split_pads_each_document_and_covers_it_once(cp: int) -> None:
    """megatron's ``thd`` CP layout: every segment padded to 2 x CP and cut into chunks of its own; the ranks'
    parts together hold every real token once, padding carries the fill value, and the filler segment reaches
    the requested length."""
    from nemotron_plugins.puzzle.context_parallel import (
        packed_document_ids,
        packed_local_positions,
        split_packed_batch_for_context_parallel,
    )

    cu = torch.tensor([0, 5, 6, 13, 16], dtype=torch.int32)
    tokens = torch.arange(100, 116).reshape(1, -1)
    mask = torch.ones(1, 16)
    length = 64
    seen: list[int] = []
    for rank in range(cp):
        local, params = split_packed_batch_for_context_parallel(
            {"tokens": tokens, "loss_mask": mask, "attention_mask": None},
            cu,
            rank,
            cp,
            length=length,
            pad_values={"tokens": -1},
        )
        assert local["attention_mask"] is None
        assert local["tokens"].shape == (1, length // cp)
        padded = params.cu_seqlens_q_padded
        assert padded[-1] == length and torch.all((padded[1:] - padded[:-1]) % (2 * cp) == 0)
        assert params.cu_seqlens_q.tolist() == [0, 5, 6, 13, 16, 16]  # the filler has no real tokens
        assert params.max_seqlen_q == int((padded[1:] - padded[:-1]).max())
        real = local["tokens"][0] >= 0
        assert torch.equal(local["loss_mask"][0] == 1, real)  # padding has no loss
        # Each real token sits in its own document, at the position megatron's thd RoPE gives it.
        positions = packed_local_positions(padded, rank, cp)
        docs = packed_document_ids(padded, positions)
        for token, pos, doc in zip(local["tokens"][0].tolist(), positions.tolist(), docs.tolist(), strict=True):
            if token >= 0:
                source = token - 100
                assert packed_document_ids(cu, torch.tensor([source])).item() == doc
                assert pos - int(padded[doc]) == source - int(cu[doc])
        seen += [t - 100 for t in local["tokens"][0].tolist() if t >= 0]
    assert sorted(seen) == list(range(16))


def test_packed_split_errors_name_the_problem() -> None:
    from nemotron_plugins.puzzle.context_parallel import (
        packed_local_positions,
        split_packed_batch_for_context_parallel,
    )

    cu = torch.tensor([0, 3, 8])
    with pytest.raises(ContextParallelError, match="packed length 6 must be a multiple of 4 and at least"):
        split_packed_batch_for_context_parallel({"tokens": torch.zeros(1, 8)}, cu, 0, 2, length=6)
    with pytest.raises(ContextParallelError, match=r"tokens: a packed batch tensor must be \[1, 8\]"):
        split_packed_batch_for_context_parallel({"tokens": torch.zeros(2, 4)}, cu, 0, 2)
    with pytest.raises(ContextParallelError, match="packed segment 0 .* has length 3"):
        packed_local_positions(cu, 0, 2)
