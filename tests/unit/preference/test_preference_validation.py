"""Settings the preference tasks do not act on are refused, naming the field (a setting is used or refused)."""

from __future__ import annotations

import pytest

from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.validation import validate_recipe


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("tiny_reward_model_cpu", ["preference.beta=0.5"], "preference.beta is an RPO setting"),
        ("tiny_reward_model_cpu", ["generation={}"], "task 'reward_model' does not use generation"),
        ("tiny_reward_model_cpu", ["preference=null"], "task 'reward_model' needs the preference block"),
        ("tiny_rpo_offline_cpu", ["reward_workers=2"], "reward_workers applies to online RPO only"),
        ("tiny_rpo_offline_cpu", ["preference.use_margin=true"], "preference.use_margin is a reward-model setting"),
        ("tiny_rpo_offline_cpu", ["preference.num_generations=4"], "preference.num_generations is an online-RPO"),
        ("tiny_rpo_offline_cpu", ["preference.beta=0"], "preference.beta=0"),
        ("tiny_rpo_offline_cpu", ["data.dataset=post_training"], "data.dataset='preference_pairs'"),
        (
            "tiny_rpo_offline_cpu",
            ["preference.loss=dpo", "preference.reward_scale=2.0"],
            "preference.reward_scale is unused with preference.loss='dpo'",
        ),
        ("tiny_rpo_online_cpu", ["preference.num_generations=1"], "preference.num_generations=1 must be >= 2"),
        ("tiny_rpo_online_cpu", ["generation=null"], "preference.mode='online' needs generation and rewards"),
        ("tiny_rpo_online_cpu", ["generation.max_new_tokens=64"], "exceeds model.seq_length=128"),
        ("tiny_preference_sft_cpu", ["preference={}"], "preference is set but task is not"),
    ],
)
def test_refused(name: str, overrides: list[str], message: str) -> None:
    report = validate_recipe(build_recipe(name, overrides), memory=False, inputs=False, plugins=False)
    assert any(message in e for e in report.errors), report.errors


def test_missing_pairs_file_names_the_field(tmp_path) -> None:
    config = build_recipe("tiny_rpo_offline_cpu", [f"data.path={tmp_path / 'none.jsonl'}", "data.eval_path=null"])
    config.evaluation.num_samples = 0
    report = validate_recipe(config, memory=False, plugins=False)
    assert any(e.startswith("data.path=") and "does not exist" in e for e in report.errors), report.errors
