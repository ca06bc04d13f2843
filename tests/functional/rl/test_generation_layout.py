"""The megatron engine at a generation layout of its own (a TP1 copy per rank, refreshed by the refit stream) gives
the rollouts of the colocated layout whatever the training layout: training TP2 x DP1 and PP2 x DP1 with generation
TP1 x DP2 reproduce training TP1 x DP2 decoding with the policy itself, greedy and sampled, before and after a GRPO
update; the update matches; after it the copy equals the training weights. Two gloo processes."""

from __future__ import annotations

import generation_layout_worker as worker
import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path is what this checks")

RUNS = {
    "colocated TP1 x DP2": ({}, "training"),
    "TP2 training, TP1 x DP2 generation": ({"tensor_model_parallel_size": 2}, "generation"),
    "PP2 training, TP1 x DP2 generation": ({"pipeline_model_parallel_size": 2}, "generation"),
}


def _same_samples(got, want, what: str) -> None:
    assert got.prompt_index == want.prompt_index, what
    assert got.completion_ids == want.completion_ids, what
    assert got.finished == want.finished, what
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-5, msg=lambda m: f"{what}: {m}")


def test_generation_layout_reproduces_colocated_rollouts() -> None:
    per_rank = run_local_processes(worker.layouts_worker, 2, (RUNS,), timeout_s=600)
    reference = per_rank[0]["colocated TP1 x DP2"]
    assert reference["embedded"] and reference["copy_matches_before"] is None
    # The reference decodes two replicas' shares and samples differ between prompts: the comparison has content.
    assert len(reference["before"]["sampled"].completion_ids) == 16
    assert reference["before"]["sampled"].completion_ids != reference["after"]["sampled"].completion_ids
    for name in RUNS:
        for rank, result in enumerate(per_rank):
            run = result[name]
            assert run["layout"] == (2, rank), f"{name}: generation replicas {run['layout']}"
            if name != "colocated TP1 x DP2":
                assert not run["embedded"], name
                assert run["copy_matches_before"] and run["copy_matches_after"], f"{name} rank {rank}: copy != policy"
            for when in ("before", "after"):
                for kind in ("greedy", "sampled"):
                    _same_samples(run[when][kind], reference[when][kind], f"{name} rank {rank} {when} {kind}")
            for key in worker.KEYS:
                got, want = run["metrics"][key], reference["metrics"][key]
                assert got == pytest.approx(want, rel=1e-4, abs=1e-5), f"{name} rank {rank}: {key} {got} vs {want}"
