"""The preference tasks end to end on CPU (tiny model, a few steps): reward model with a checkpoint round trip and
resume, offline and online RPO through ``run_recipe``."""

from __future__ import annotations

import json

import pytest
import torch

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.dispatch import run_recipe
from nemotron_plugins.preference.synthetic import write_preference_task


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("pref_data")
    return write_preference_task(
        out, seed=1, sft_rows=16, train_pairs=32, heldout_pairs=12, train_prompts=16, heldout_prompts=6
    )


def _small(task, kind: str, out) -> list[str]:
    data = (
        [f"data.path={task['pairs_train']}", f"data.eval_path={task['pairs_heldout']}"]
        if kind == "pairs"
        else [f"data.path={task['prompts_train']}", f"data.eval_path={task['prompts_heldout']}"]
    )
    return [
        f"output_dir={out}",
        "init_from_recipe=null",
        "train_steps=2",
        "micro_batch_size=2",
        "global_batch_size=4",
        "evaluation.num_samples=12",
        "torch_threads=1",
        *data,
    ]


def _pair_rewards(checkpoint: str, task) -> tuple[float, float]:
    """Mean reward gap and accuracy of the held-out pairs scored by the saved reward model (a fresh model instance
    loading the checkpoint through the ``megatron_reward_model`` reward)."""
    from nemotron_plugins.preference.data import read_preference_pairs
    from nemotron_plugins.rewards.base import RewardSample, build_reward

    pairs = read_preference_pairs(task["pairs_heldout"])
    reward = build_reward("megatron_reward_model", checkpoint=checkpoint, max_length=128)
    try:
        samples = [RewardSample(completion=p.chosen, prompt=p.messages) for p in pairs]
        samples += [RewardSample(completion=p.rejected, prompt=p.messages) for p in pairs]
        results = reward.score(samples)
    finally:
        reward.close()
    assert all(r.ok for r in results)
    scores = torch.tensor([r.score for r in results], dtype=torch.float64)
    chosen, rejected = scores[: len(pairs)], scores[len(pairs) :]
    return float((chosen - rejected).mean()), float((chosen > rejected).double().mean())


def test_reward_model_trains_saves_reloads_and_resumes(task, tmp_path) -> None:
    out = tmp_path / "rm"
    config = build_recipe("tiny_reward_model_cpu", _small(task, "pairs", out))
    result = run_recipe(config)
    assert result.steps_done == 2 and len(result.losses) == 2
    assert all(0 < v < 10 for v in result.losses.values())
    assert result.eval is not None and result.eval["pairs"] == 12
    gap, accuracy = _pair_rewards(str(out / "checkpoints"), task)
    # The reloaded model scores exactly as the trained one did at the end of training.
    assert gap == pytest.approx(result.eval["gap"], abs=1e-5)
    assert accuracy == pytest.approx(result.eval["accuracy"])
    # A longer run with the same output resumes at step 2 (nothing else repeats).
    resumed = run_recipe(build_recipe("tiny_reward_model_cpu", [*_small(task, "pairs", out), "train_steps=3"]))
    assert resumed.start_step == 2 and list(resumed.losses) == [3]
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3


@pytest.mark.parametrize("loss", ["bwd_kl", "dpo"])
def test_offline_rpo_runs(task, tmp_path, loss: str) -> None:
    overrides = [*_small(task, "pairs", tmp_path / loss), f"preference.loss={loss}"]
    if loss == "dpo":
        overrides.append("preference.reward_scale=1.0")
    result = run_recipe(build_recipe("tiny_rpo_offline_cpu", overrides))
    assert result.steps_done == 2
    # Before any update the policy IS the reference: every implicit gap is 0 and the loss is D[0 || g].
    assert result.eval_before["gap"] == pytest.approx(0.0, abs=1e-6)
    assert result.eval["pairs"] == 12


def test_online_rpo_runs_with_the_trained_reward_model(task, tmp_path) -> None:
    rm_out = tmp_path / "rm"
    run_recipe(build_recipe("tiny_reward_model_cpu", _small(task, "pairs", rm_out)))
    out = tmp_path / "online"
    overrides = [
        *_small(task, "prompts", out),
        "evaluation.num_samples=6",
        "generation.max_new_tokens=8",
        f"rewards=[{{'name': 'megatron_reward_model', 'options': {{'checkpoint': '{rm_out / 'checkpoints'}', "
        "'max_length': 128}}]",
    ]
    result = run_recipe(build_recipe("tiny_rpo_online_cpu", overrides))
    assert result.steps_done == 2
    assert result.eval_before["prompts"] == 6 and result.eval["sampled_scored"] == 6
    records = [json.loads(line) for line in (out / "eval_after.jsonl").read_text().splitlines()]
    assert {r["mode"] for r in records} == {"sampled", "greedy"} and len(records) == 12
