"""A GRPO policy update gives the same loss, KL, clip fraction and gradient norm at TP=2, PP=2 and DP=2 as at TP=1
on the same rollouts, and a single-rank state resharded to TP=2 reproduces the TP=1 log-probs."""

from __future__ import annotations

import grpo_parallel_worker as worker
import pytest
import torch

from nemotron_plugins.runtime.distributed import run_local_processes

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the gloo/CPU path is what this checks")

LAYOUTS = {
    "TP=2": {"tensor_model_parallel_size": 2},
    "PP=2": {"pipeline_model_parallel_size": 2},
    "DP=2": {},
}


def test_parallel_layouts_reproduce_tp1_update(tmp_path) -> None:
    torch.set_num_threads(1)
    reference = worker.run_updates({})
    first, second = reference["metrics"]
    # Two optimizer steps per rollout: the second one's ratios (against the rollout's "old" log-probs) leave 1, and
    # the policy drifts from the reference.
    assert first["optimizer_steps"] == 2 and first["ratio_mean"] != pytest.approx(1.0, abs=1e-5)
    assert first["kl"] < second["kl"] and first["grad_norm"] > 0
    # Packed micro-batches (PackedSeqParams, one row per micro-batch) give the log-probs of padded rows.
    torch.testing.assert_close(reference["logprobs"], reference["logprobs_unpacked"], rtol=0, atol=1e-5)
    assert first["train/padded_over_real"] < first["train/padded_over_real_rollout_longest"]

    # The single-rank state the resharding case starts from: the same layout-invariant initial weights.
    from nemotron_plugins.puzzle.model import build_puzzle_model, init_weights_layout_invariant_
    from nemotron_plugins.puzzle.tiny import tiny_puzzle_config
    from nemotron_plugins.runtime.distributed import distributed_context

    with distributed_context(seed=worker.SEED):
        model = build_puzzle_model(tiny_puzzle_config(worker.VOCAB), seq_length=worker.SEQ)
        init_weights_layout_invariant_(model, seed=worker.SEED)
        torch.save(model.state_dict(), tmp_path / "full.pt")

    per_rank = run_local_processes(worker.parallel_worker, 2, (LAYOUTS, str(tmp_path / "full.pt")), timeout_s=300)
    for name in [*LAYOUTS, "TP=2 resharded"]:
        for rank, result in enumerate(per_rank):
            for update, (got, want) in enumerate(zip(result[name]["metrics"], reference["metrics"], strict=True)):
                for key in worker.KEYS:
                    assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), (
                        f"{name} rank {rank} update {update}: {key} = {got[key]} vs TP=1 {want[key]}"
                    )
        reported = [r[name]["logprobs"] for r in per_rank if r[name]["logprobs"] is not None]
        assert len(reported) >= 1, f"{name}: no rank reported log-probs"
        for lp in reported:
            torch.testing.assert_close(lp, reference["logprobs"], rtol=0, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
