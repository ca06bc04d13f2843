"""Rollouts split over generation replicas and exchanged as tensors give the samples of one replica."""

from __future__ import annotations

from nemotron_plugins.rl.generation import GenerationLayout
from nemotron_plugins.runtime.distributed import run_local_processes
from tests.functional.rl import rollout_exchange_worker as worker


def test_two_generation_replicas_return_the_single_replica_rollouts() -> None:
    single = worker.rollout(GenerationLayout(dp_size=1, dp_rank=0))
    assert len(single.completion_ids) == 12 and single.prompt_index == [i for i in range(4) for _ in range(3)]
    per_rank = run_local_processes(worker.exchange_worker, 2, timeout_s=120)
    for result in per_rank:
        got = result["samples"]
        assert got.prompt_index == single.prompt_index
        assert got.completion_ids == single.completion_ids
        assert got.logprobs == single.logprobs
        assert got.finished == single.finished
        uneven = result["uneven"]
        assert uneven.prompt_index == [7] and uneven.completion_ids == [[1, 2, 3, 4, 5, 6]]
        assert uneven.logprobs == [[-1.0] * 6] and uneven.finished == [True]
