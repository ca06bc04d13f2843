"""Spawned by ``test_rollout_exchange.py``: rollouts split over two generation replicas, exchanged as tensors."""

from __future__ import annotations

from typing import Any

import torch


class EchoEngine:
    """A deterministic rollout engine: completion j of a prompt is its tokens reversed plus ``j`` (log-probs
    ``-0.5 * position``), finished when ``j`` is even; it ignores the seed, so any split of the prompts over
    replicas must give the same samples."""

    def rollout(self, prompts, *, n, temperature, top_p, max_new_tokens, seed):
        from nemotron_plugins.rl.engines.base import Rollout, RolloutGroup

        groups = []
        for i, p in enumerate(prompts):
            group = RolloutGroup(prompt_index=i, prompt=p)
            for j in range(n):
                ids = [*reversed(p), j][:max_new_tokens]
                group.rollouts.append(
                    Rollout(
                        prompt_ids=list(p),
                        completion_ids=ids,
                        completion_text="",
                        logprobs=[-0.5 * k for k in range(len(ids))],
                        finish_reason="stop" if j % 2 == 0 else "length",
                    )
                )
            groups.append(group)
        return groups


PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11]]


def rollout(layout: Any) -> Any:
    from nemotron_plugins.rl.generation import distributed_rollout

    return distributed_rollout(
        EchoEngine(), PROMPTS, n=3, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=0, layout=layout
    )


def exchange_worker(rank: int) -> dict[str, Any]:
    """Two generation replicas (world 2): the rollouts of prompts split 2 / 2, then uneven local blocks."""
    from nemotron_plugins.rl.generation import GenerationLayout, Samples, exchange_samples

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        samples = rollout(GenerationLayout(dp_size=2, dp_rank=rank))
        # Uneven blocks: rank 0 has one long completion, rank 1 none.
        local = (
            Samples(prompt_index=[7], completion_ids=[[1, 2, 3, 4, 5, 6]], logprobs=[[-1.0] * 6], finished=[True])
            if rank == 0
            else Samples(prompt_index=[], completion_ids=[], logprobs=[], finished=[])
        )
        uneven = exchange_samples(local)
        return {"samples": samples, "uneven": uneven}
    finally:
        torch.distributed.destroy_process_group()
