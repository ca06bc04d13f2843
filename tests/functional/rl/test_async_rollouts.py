"""``generation.async_rollouts``: one-step off-policy generation overlapped with the update.

* The async run is exactly the synchronous run whose generation copy is refitted one step late: the rollouts of
  step t + 1 are those the synchronous loop samples from the weights before update t (same prompts, seeds,
  completions, rewards; same losses and updates).
* Two gloo processes (training DP2, generation TP1 x DP2: the background thread exchanges rollouts and scores
  rewards while the main thread's update all-reduces gradients): a run stopped at a checkpoint and resumed equals
  the uninterrupted one.
* Refusals: the colocated megatron engine (it decodes with the model being updated), no importance-sampling
  correction, a task that does not overlap.
"""

from __future__ import annotations

import async_rollout_worker as worker
import pytest
import torch

from nemotron_plugins.launch.validation import check_fields
from nemotron_plugins.rl.generation import GenerationWorker
from nemotron_plugins.rl.trainer import run_grpo
from nemotron_plugins.runtime.distributed import run_local_processes
from nemotron_plugins.runtime.metrics import read_jsonl
from tests.run_configs import tiny_grpo

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path is what this checks")

ASYNC = [
    "generation.megatron_layout=generation",
    "algorithm.importance_sampling_correction=true",
    # DAPO's soft overlong penalty: a random policy earns no reward, its lengths still spread the advantages.
    "algorithm.overlong_buffer=8",
]


def _strip(rows: list[dict]) -> list[dict]:
    """Metrics without the wall-clock ones and the async bookkeeping (the sync run has none)."""
    return [
        {k: v for k, v in r.items() if k != "timestamp" and not k.startswith(("time/", "tokens_per_s/", "async/"))}
        for r in rows
    ]


def test_async_rollouts_are_the_sync_rollouts_of_the_previous_weights(tmp_path, monkeypatch) -> None:
    steps = 4
    common = [f"train_steps={steps}", "checkpoint.save_interval=0", *ASYNC]
    torch.set_num_threads(1)
    overlapped = run_grpo(tiny_grpo(tmp_path / "async", *common, "generation.async_rollouts=true")).history

    # The synchronous loop with the copy refitted one step late: after update t the copy gets the weights before it.
    from nemotron_plugins.rl.refit import stream_hf_weights

    held: dict[str, dict[str, torch.Tensor] | None] = {"previous": None}

    def late_refit(self: GenerationWorker, policy) -> None:
        now = {
            name: tensor.clone()
            for bucket in stream_hf_weights(policy.module, config=policy.model_config, export_widths=False)
            for name, tensor in bucket
        }
        if held["previous"] is not None:
            self.engine.update_weights(state_dict=held["previous"])
        held["previous"] = now

    monkeypatch.setattr(GenerationWorker, "refit", late_refit)
    late = run_grpo(tiny_grpo(tmp_path / "late", *common)).history

    assert [h["async/weight_version_lag"] for h in overlapped] == [0.0] + [1.0] * (steps - 1)
    assert [h["async/prefetched"] for h in overlapped] == [0.0] + [1.0] * (steps - 1)
    # The policy learns (the comparison has content) and the generator lags it: at step 1 generator and trainer hold
    # the same weights, later the generator's log-probs are those of the weights one update back.
    assert sum(h["grad_norm"] > 0 for h in overlapped) >= steps - 1  # one step's lengths may all hit the limit
    assert abs(overlapped[0]["generator_trainer_logprob_diff"]) < 1e-5
    assert all(abs(h["generator_trainer_logprob_diff"]) > 1e-4 for h in overlapped[1:])
    assert all(h["is_weight_mean"] != 1.0 for h in overlapped[1:])
    # Same prompts, completions, rewards, advantages, losses and updates, step by step (bitwise).
    assert _strip(overlapped) == _strip(late)


def test_async_dp2_resume_matches_uninterrupted(tmp_path) -> None:
    common = [
        "train_steps=4",
        "checkpoint.save_interval=2",
        "cluster.devices_per_node=2",
        "model.seq_length=128",
        "data.max_seq_length=96",
        "generation.max_new_tokens=10",
        "micro_batch_size=2",
        "generation.async_rollouts=true",
        # refills draw extra prompts from the sampler inside the background collection
        "algorithm.skip_uniform_groups=true",
        *ASYNC,
    ]
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    runs = [(straight, common), (resumed, [*common, "stop_after_steps=2"]), (resumed, common)]
    per_rank = run_local_processes(worker.tiny_runs, 2, (runs,), timeout_s=300)
    assert _strip(per_rank[0][0]) == _strip(per_rank[1][0])  # every rank reports the same metrics
    whole, first, second = per_rank[0]
    assert [len(whole), len(first), len(second)] == [4, 2, 2]
    # No rollouts in flight across a checkpoint: the step after one collects synchronously from the saved weights.
    assert [h["async/weight_version_lag"] for h in whole] == [0.0, 1.0, 0.0, 1.0]
    assert [h["async/prefetched"] for h in whole] == [0.0, 1.0, 0.0, 1.0]
    assert [h["async/weight_version_lag"] for h in second] == [0.0, 1.0]
    assert all(h["grad_norm"] > 0 for h in whole)
    assert _strip(first + second) == _strip(whole)
    assert _strip(read_jsonl(f"{resumed}/metrics.jsonl")) == _strip(read_jsonl(f"{straight}/metrics.jsonl"))


def test_async_rollouts_are_refused_where_they_cannot_overlap(tmp_path) -> None:
    on = "generation.async_rollouts=true"
    colocated = check_fields(tiny_grpo(tmp_path, on, "algorithm.importance_sampling_correction=true"))
    assert len(colocated) == 1
    assert "generation.async_rollouts=true" in colocated[0] and "megatron_layout='generation'" in colocated[0]
    uncorrected = check_fields(tiny_grpo(tmp_path, on, "generation.megatron_layout=generation"))
    assert len(uncorrected) == 1 and "algorithm.importance_sampling_correction=true" in uncorrected[0]
    assert check_fields(tiny_grpo(tmp_path, on, *ASYNC)) == []
    vllm = tiny_grpo(tmp_path, on, "algorithm.importance_sampling_correction=true")
    vllm.generation.engine = "vllm"
    assert not [e for e in check_fields(vllm) if "async_rollouts" in e]
    sft = tiny_grpo(tmp_path, on, *ASYNC)
    sft.task = "sft"
    assert any("generation.async_rollouts=true is a GRPO / RLOO setting" in e for e in check_fields(sft))
    from nemotron_plugins.launch.validation import RecipeValidationError

    with pytest.raises(RecipeValidationError, match="generation.async_rollouts"):
        run_grpo(tiny_grpo(tmp_path, on))
