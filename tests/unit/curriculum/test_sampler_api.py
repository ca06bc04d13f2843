"""Sampler API: registry, PyTorch DataLoader, epochs, state checks, Megatron micro-batches and consumed samples."""

from __future__ import annotations

import numpy as np
import pytest

from nemotron_plugins.curriculum.records import CurriculumInputError
from nemotron_plugins.curriculum.sampler import (
    CurriculumSamplerConfig,
    MicroBatchSampler,
    ProgressiveGaussianBatchSampler,
    RandomBatchSampler,
    build_batch_sampler,
)
from nemotron_plugins.registry import BATCH_SAMPLERS

RATES = (np.arange(200) % 9) / 8


def test_registered_and_built_from_config():
    assert {"progressive_gaussian", "random"} <= set(BATCH_SAMPLERS.names())
    config = CurriculumSamplerConfig(global_batch_size=20, seed=5)
    sampler = build_batch_sampler(RATES, config, dp_rank=1, dp_world_size=2)
    assert isinstance(sampler, ProgressiveGaussianBatchSampler)
    assert (sampler.dp_rank, sampler.dp_world_size, len(sampler)) == (1, 2, 10)
    assert all(len(b) == 10 for b in sampler)
    config.sampler = "random"
    assert isinstance(build_batch_sampler(RATES, config), RandomBatchSampler)


def test_works_as_a_pytorch_batch_sampler():
    import torch

    torch.set_num_threads(1)
    dataset = torch.arange(1000, 1200)
    sampler = ProgressiveGaussianBatchSampler(RATES, global_batch_size=25, seed=1)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler)
    expected = sampler.global_batches(0)
    got = [batch.tolist() for batch in loader]
    assert got == [[1000 + i for i in b] for b in expected]
    assert len(loader) == 8


def test_epochs_reshuffle_and_set_epoch_is_resume_safe():
    sampler = ProgressiveGaussianBatchSampler(RATES, global_batch_size=20, seed=1)
    epoch0 = list(sampler)
    assert sampler.position == (1, 0)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    # Calling set_epoch with the current epoch keeps the position (a resumed trainer does this).
    sampler.set_epoch(3)
    it = iter(sampler)
    first = [next(it), next(it)]
    state = sampler.state_dict()
    fresh = ProgressiveGaussianBatchSampler(RATES, global_batch_size=20, seed=1)
    fresh.load_state_dict(state)
    fresh.set_epoch(3)
    assert first + list(fresh) == ProgressiveGaussianBatchSampler(RATES, global_batch_size=20, seed=1).global_batches(
        3
    )


def test_state_is_plain_data_and_loads_with_torch_weights_only(tmp_path):
    import torch

    sampler = ProgressiveGaussianBatchSampler(RATES, global_batch_size=20)
    next(iter(sampler))
    torch.save({"sampler": sampler.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)["sampler"]
    assert state["next_batch"] == 1


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"seed": 9}, "seed"),
        ({"global_batch_size": 40}, "global_batch_size"),
        ({"width": 0.3}, "fingerprint"),
        ({"pass_rates": RATES[::-1].copy()}, "fingerprint"),
    ],
)
def test_load_state_rejects_another_configuration(change, field):
    kwargs = {"pass_rates": RATES, "global_batch_size": 20, "seed": 0, "width": 0.15}
    state = ProgressiveGaussianBatchSampler(**kwargs).state_dict()
    other = ProgressiveGaussianBatchSampler(**{**kwargs, **change})
    with pytest.raises(CurriculumInputError, match=f"field '{field}'"):
        other.load_state_dict(state)


def test_load_state_accepts_another_dp_layout():
    a = ProgressiveGaussianBatchSampler(RATES, global_batch_size=20, dp_world_size=4, dp_rank=3)
    it = iter(a)
    next(it)
    b = ProgressiveGaussianBatchSampler(RATES, global_batch_size=20)
    b.load_state_dict(a.state_dict())
    assert list(b) == b.global_batches(0)[1:]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"global_batch_size": 201}, "larger than the data (200 prompts)"),
        ({"global_batch_size": 10, "dp_world_size": 3}, "not divisible by dp_world_size 3"),
        ({"global_batch_size": 10, "dp_rank": 2, "dp_world_size": 2}, "dp_rank must be in [0, 1]"),
        ({"global_batch_size": 10, "num_batches": 21}, "use num_batches <= 20"),
        ({"global_batch_size": 10, "schedule": "zigzag"}, "schedule must be one of"),
        ({"global_batch_size": 10, "num_bins": 0}, "num_bins must be an integer >= 1"),
        ({"global_batch_size": 10, "center_start": 1.5}, "center_start must be None or a pass rate"),
        ({"global_batch_size": 0}, "global_batch_size must be an integer >= 1"),
        ({"global_batch_size": 10, "seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_parameters_name_the_field(kwargs, message):
    with pytest.raises(CurriculumInputError) as info:
        ProgressiveGaussianBatchSampler(RATES, **kwargs)
    assert message in str(info.value)


def test_num_batches_spans_the_curriculum_over_fewer_batches():
    sampler = ProgressiveGaussianBatchSampler(RATES, global_batch_size=10, num_batches=5, width=0.05)
    means = sampler.batch_mean_pass_rates()
    assert len(means) == 5
    assert means[0] > 0.8 and means[-1] < 0.2


def test_micro_batches_and_consumed_samples():
    sampler = ProgressiveGaussianBatchSampler(RATES, global_batch_size=40, dp_rank=1, dp_world_size=2, seed=2)
    micro = MicroBatchSampler(sampler, micro_batch_size=5)
    assert len(micro) == 5 * 4
    chunks = list(micro)
    assert all(len(c) == 5 for c in chunks)
    rank_batches = [b[20:40] for b in sampler.global_batches(0)]
    assert [i for c in chunks[:4] for i in c] == rank_batches[0]
    # Megatron's consumed_samples: 7 global batches consumed = epoch 1, batch 2.
    sampler.set_consumed_samples(7 * 40)
    assert sampler.position == (1, 2)
    assert next(iter(sampler)) == sampler.global_batches(1)[2][20:40]
    with pytest.raises(CurriculumInputError, match="not a multiple of global_batch_size 40"):
        sampler.set_consumed_samples(41)
    with pytest.raises(CurriculumInputError, match="does not divide the per-rank batch of 20"):
        MicroBatchSampler(sampler, micro_batch_size=3)


def test_partial_last_batch_is_split_across_ranks():
    ranks = [
        ProgressiveGaussianBatchSampler(RATES, global_batch_size=60, drop_last=False, dp_rank=r, dp_world_size=2)
        for r in range(2)
    ]
    last = [list(s)[-1] for s in ranks]
    assert [len(x) for x in last] == [10, 10]
    assert sorted(last[0] + last[1]) == sorted(ranks[0].global_batches(0)[-1])
