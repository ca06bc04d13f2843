"""The reward protocol, the registry and composition specs."""

from __future__ import annotations

import pickle

import pytest

from nemotron_plugins.registry import REWARDS, UnknownPluginError
from nemotron_plugins.rewards.base import (
    Reward,
    RewardResult,
    RewardSample,
    RewardSpecError,
    RewardStatus,
    SampleReward,
    build_reward,
    worst_status,
)
from nemotron_plugins.rewards.compose import Gate, Product, WeightedSum

BUILTINS = ["ifeval", "llm_judge", "math", "mcq", "reward_model", "think_format", "tool_call"]


def on(completion: str, gt: object = None) -> RewardSample:
    return RewardSample(completion=completion, ground_truth=gt, metadata={"reasoning": "on"})


def test_builtins_registered_and_buildable():
    for name in BUILTINS:
        assert name in REWARDS.names()
        reward = build_reward(name)
        assert isinstance(reward, Reward)
        assert reward.name == name


def test_unknown_reward_lists_valid_names():
    with pytest.raises(UnknownPluginError, match="math"):
        build_reward("no_such_reward")


def test_bad_options_named():
    with pytest.raises(RewardSpecError, match="math"):
        build_reward("math", no_such_option=1)


def test_samples_and_results_pickle_and_are_frozen():
    sample = on("<think></think>4", "4")
    assert pickle.loads(pickle.dumps(sample)) == sample
    result = RewardResult(score=1.0, components={"a": 1.0})
    assert pickle.loads(pickle.dumps(result)) == result
    with pytest.raises(AttributeError):
        sample.completion = "x"  # type: ignore[misc]
    assert result.to_dict() == {"score": 1.0, "status": "ok", "components": {"a": 1.0}, "message": None}
    assert RewardStatus("timeout") is RewardStatus.TIMEOUT and RewardStatus.OK == "ok"


def test_worst_status_order():
    assert worst_status([]) is RewardStatus.OK
    assert worst_status([RewardStatus.OK, RewardStatus.INVALID_INPUT]) is RewardStatus.INVALID_INPUT
    assert worst_status([RewardStatus.TIMEOUT, RewardStatus.ERROR, RewardStatus.OK]) is RewardStatus.ERROR


def test_weighted_sum_components_named_after_subrewards():
    reward = build_reward({"weighted": {"math": 1.0, "think_format": 0.5}})
    assert isinstance(reward, WeightedSum)
    [good, no_think, wrong] = reward.score([on("<think>x</think>4", "4"), on("4", "4"), on("<think>x</think>5", "4")])
    assert good.score == 1.5 and good.ok
    assert no_think.score == 1.0
    assert wrong.score == 0.5
    assert good.components["math"] == 1.0 and good.components["think_format"] == 1.0
    assert "math/extracted" in good.components


def test_weighted_list_form_with_aliases_and_options():
    reward = build_reward(
        {
            "weighted": [
                {"reward": "math", "weight": 2.0, "name": "boxed_math", "options": {"mode": "boxed"}},
                {"reward": "math", "weight": 1.0},
            ]
        }
    )
    [r] = reward.score([on("<think></think>4", "4")])
    assert r.components["boxed_math"] == 0.0  # no \boxed: the boxed-only variant says no
    assert r.components["math"] == 1.0
    assert r.score == 1.0


def test_gate_is_format_times_accuracy():
    reward = build_reward({"gate": ["think_format", "math"]})
    assert isinstance(reward, Gate)
    results = reward.score([on("<think>x</think>4", "4"), on("4", "4"), on("<think>x</think>5", "4")])
    assert [r.score for r in results] == [1.0, 0.0, 0.0]
    assert results[1].components == {
        "think_format": 0.0,
        "think_format/think_block": 0.0,
        "think_format/answer_present": 0.0,  # no answer after a </think>
        "math": 1.0,
        "math/extracted": 1.0,
        "math/boxed": 0.0,
    }


def test_gate_fail_score_and_product():
    gate = build_reward({"gate": ["think_format", "math"], "fail_score": -1.0})
    assert gate.score([on("4", "4")])[0].score == -1.0
    product = build_reward({"product": ["think_format", "math"]})
    assert isinstance(product, Product)
    assert [r.score for r in product.score([on("<think></think>4", "4"), on("4", "4")])] == [1.0, 0.0]


def test_composed_status_is_worst_and_messages_named():
    reward = build_reward({"weighted": {"math": 1.0, "think_format": 1.0}})
    [r] = reward.score([RewardSample(completion="4", ground_truth="4")])  # no reasoning mode
    assert r.status is RewardStatus.INVALID_INPUT
    assert r.message is not None and r.message.startswith("think_format:")
    assert r.components["math"] == 1.0


@pytest.mark.parametrize(
    "spec, match",
    [
        ({"weighted": "math"}, "weighted"),
        ({"weighted": {"math": "heavy"}}, "finite number"),
        ({"gate": ["math"]}, "at least two"),
        ({"gate": "math"}, "list"),
        ({"gate": ["think_format", "math"], "thresold": 1}, "unknown keys"),
        ({"nope": 1}, "unrecognised"),
        (42, "string or a mapping"),
    ],
)
def test_bad_specs_raise_clear_errors(spec, match):
    with pytest.raises(RewardSpecError, match=match):
        build_reward(spec)


class _Exploding(SampleReward):
    name = "exploding"

    def score_sample(self, sample):
        if sample.completion == "boom":
            raise RuntimeError("kaput")
        return RewardResult(score=1.0)


def test_sample_reward_never_raises_and_bounds_size():
    reward = _Exploding()
    reward.max_completion_chars = 10
    results = reward.score(
        [
            RewardSample(completion="fine"),
            RewardSample(completion="boom"),
            RewardSample(completion="x" * 11),
            RewardSample(completion=None),  # type: ignore[arg-type]
        ]
    )
    assert [r.status for r in results] == [
        RewardStatus.OK,
        RewardStatus.ERROR,
        RewardStatus.INVALID_INPUT,
        RewardStatus.INVALID_INPUT,
    ]
    assert "kaput" in results[1].message
    assert "bound of 10" in results[2].message


def test_build_reward_passes_instances_through():
    reward = _Exploding()
    assert build_reward(reward) is reward


@pytest.mark.parametrize(
    "module",
    ["base", "text", "math", "mcq", "think_format", "tool_call", "ifeval", "llm_judge", "adapters"],
)
def test_docstring_examples(module):
    import doctest

    if module == "ifeval":  # its examples include the English-case checks
        from tests.unit.rewards.conftest import require_langdetect

        require_langdetect()
    import importlib

    mod = importlib.import_module(f"nemotron_plugins.rewards.{module}")
    failures, tried = doctest.testmod(mod, verbose=False)
    assert tried > 0 and failures == 0
