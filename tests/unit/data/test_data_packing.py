"""Sequence packing: boundaries, labels, masks, positions, cu_seqlens, attention mask, torch dataset."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sft_row_factory import make_row

from nemotron_plugins.data.packing import pack_examples, packing_stats
from nemotron_plugins.data.sft import SFTExample, build_sft_examples


def example(n_prompt: int, n_target: int, start: int, line: int = 0) -> SFTExample:
    ids = list(range(start, start + n_prompt + n_target))
    return SFTExample(
        input_ids=ids, loss_mask=[0] * n_prompt + [1] * n_target, prompt_length=n_prompt, reasoning="on", line=line
    )


def test_labels_and_loss_never_cross_sequence_boundaries():
    examples = [example(3, 2, 100, line=1), example(2, 3, 200, line=2)]
    (row,) = pack_examples(examples, 12, pad_id=0, strategy="sequential")
    assert row.input_ids == [100, 101, 102, 103, 104, 200, 201, 202, 203, 204, 0, 0]
    assert row.seq_boundaries == [(0, 5), (5, 10)]
    assert row.labels == [101, 102, 103, 104, 0, 201, 202, 203, 204, 0, 0, 0]
    assert row.loss_mask == [0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 0, 0]
    assert row.position_ids == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert row.cu_seqlens == [0, 5, 10, 12]
    assert row.max_seqlen == 5
    assert row.segment_ids == [0] * 5 + [1] * 5 + [-1, -1]
    assert row.num_padding == 2
    assert row.example_lines == [1, 2]
    assert row.labels_with_ignore()[:5] == [-100, -100, 103, 104, -100]


def test_trained_labels_are_exactly_the_target_tokens_incl_eot(tiny_tokenizer):
    rows = [
        make_row(),
        make_row(output="4", reasoning="off"),
        make_row(user="What is 5+5?", output="<think>\n</think>\n\n10"),
    ]
    examples, _ = build_sft_examples(rows, tiny_tokenizer, max_seq_len=256)
    packed = pack_examples(examples, 256)
    eot = tiny_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row in packed:
        for (start, end), line in zip(row.seq_boundaries, row.example_lines, strict=True):
            ex = next(e for e in examples if e.line == line)
            trained = [row.labels[i] for i in range(start, end) if row.loss_mask[i]]
            assert trained == ex.target_ids
            assert trained[-1] == eot
    assert sum(sum(r.loss_mask) for r in packed) == sum(len(e.target_ids) for e in examples)


def test_attention_mask_is_block_diagonal_causal():
    (row,) = pack_examples([example(1, 2, 10), example(1, 1, 20)], 6, strategy="sequential")
    mask = row.attention_allowed()
    expected = np.zeros((6, 6), dtype=bool)
    expected[0:3, 0:3] = np.tril(np.ones((3, 3), dtype=bool))
    expected[3:5, 3:5] = np.tril(np.ones((2, 2), dtype=bool))
    expected[5, 5] = True
    assert (mask == expected).all()


@pytest.mark.parametrize("strategy", ["first_fit_decreasing", "sequential", "none"])
def test_strategies_keep_every_example_once_and_fit(strategy):
    lengths = [7, 3, 5, 2, 8, 1, 4, 6]
    examples = [example(1, n - 1, 1000 * (i + 1), line=i + 1) for i, n in enumerate(lengths)]
    packed = pack_examples(examples, 10, strategy=strategy)
    lines = sorted(line for row in packed for line in row.example_lines)
    assert lines == list(range(1, 9))
    for row in packed:
        assert len(row.input_ids) == len(row.labels) == len(row.loss_mask) == len(row.position_ids) == 10
        assert row.seq_boundaries[-1][1] <= 10
        assert row.example_lines == sorted(row.example_lines)
    if strategy == "none":
        assert len(packed) == 8
    if strategy == "first_fit_decreasing":
        assert len(packed) == 4  # 36 tokens: 8+2, 7+3, 6+4, 5+1
    stats = packing_stats(packed)
    assert stats["sequences"] == 8 and 0 < stats["fill_ratio"] <= 1


def test_pack_errors():
    with pytest.raises(ValueError, match="need 1..4 tokens"):
        pack_examples([example(3, 2, 0)], 4)
    with pytest.raises(ValueError, match="unknown packing strategy"):
        pack_examples([example(1, 1, 0)], 4, strategy="random")  # type: ignore[arg-type]


def test_torch_dataset_and_collate():
    import torch

    from nemotron_plugins.data.torch_dataset import PackedSFTDataset, collate_packed

    packed = pack_examples([example(2, 2, 10), example(1, 2, 20), example(3, 3, 30)], 8, strategy="sequential")
    dataset = PackedSFTDataset(packed)
    assert len(dataset) == 2
    item = dataset[0]
    assert item["tokens"].dtype == torch.long and item["tokens"].shape == (8,)
    assert item["loss_mask"].dtype == torch.float32
    assert item["cu_seqlens"].tolist() == [0, 4, 7, 8]
    batch = collate_packed([dataset[0], dataset[1]])
    assert batch["tokens"].shape == (2, 8)
    assert batch["cu_seqlens"].tolist() == [0, 4, 7, 8, 14, 16]
    assert batch["max_seqlen"] == 6
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_packed)
    assert next(iter(loader))["labels"].shape == (2, 8)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=25),
    strategy=st.sampled_from(["first_fit_decreasing", "sequential", "none"]),
)
def test_packing_invariants_property(sizes, strategy):
    examples = [example(p, t, 100 * (i + 1), line=i + 1) for i, (p, t) in enumerate(sizes)]
    packed = pack_examples(examples, 12, strategy=strategy)
    by_line = {e.line: e for e in examples}
    seen = []
    for row in packed:
        assert len(row.input_ids) == 12 and row.cu_seqlens[-1] == 12
        for (start, end), line in zip(row.seq_boundaries, row.example_lines, strict=True):
            ex = by_line[line]
            seen.append(line)
            assert row.input_ids[start:end] == ex.input_ids
            assert row.position_ids[start:end] == list(range(end - start))
            assert row.loss_mask[end - 1] == 0  # nothing is predicted across a boundary
            assert [row.labels[i] for i in range(start, end) if row.loss_mask[i]] == ex.target_ids
        assert sum(row.loss_mask) == sum(len(by_line[line].target_ids) for line in row.example_lines)
    assert sorted(seen) == sorted(by_line)
