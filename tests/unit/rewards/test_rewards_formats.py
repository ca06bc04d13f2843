"""``think_format``, ``mcq`` and ``tool_call``."""

from __future__ import annotations

import json

import pytest

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.mcq import MultipleChoiceReward, extract_choice
from nemotron_plugins.rewards.think_format import ThinkFormatReward
from nemotron_plugins.rewards.tool_call import ToolCallReward, canonical, last_tool_block

# -- think_format ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, mode, expected",
    [
        ("<think>reasoning</think>answer", "on", 1.0),
        ("  \n<think></think>\nanswer", "on", 1.0),  # empty think block allowed
        ("answer", "on", 0.0),
        ("<think>reasoning</think>", "on", 0.0),  # no answer
        ("<think>never closed answer", "on", 0.0),
        ("preamble <think>x</think>answer", "on", 0.0),
        ("<think>a</think><think>b</think>answer", "on", 0.0),
        ("</think>answer<think>", "on", 0.0),
        ("answer", "off", 1.0),
        ("<think></think>answer", "off", 0.0),
        ("answer </think>", "off", 0.0),
        ("   ", "off", 0.0),
    ],
)
def test_think_format(completion, mode, expected):
    [r] = ThinkFormatReward().score([RewardSample(completion=completion, metadata={"reasoning": mode})])
    assert r.ok
    assert r.score == expected
    assert (r.message is None) == (expected == 1.0)


def test_think_format_mode_from_system_prompt_or_default():
    reward = ThinkFormatReward()
    prompt = [{"role": "system", "content": "detailed thinking off"}, {"role": "user", "content": "hi"}]
    assert reward.score([RewardSample(completion="hello", prompt=prompt)])[0].score == 1.0
    [missing] = reward.score([RewardSample(completion="hello")])
    assert missing.status is RewardStatus.INVALID_INPUT and "reasoning" in missing.message
    assert ThinkFormatReward(default_mode="off").score([RewardSample(completion="hello")])[0].score == 1.0
    with pytest.raises(ValueError, match="default_mode"):
        ThinkFormatReward(default_mode="maybe")


# -- mcq -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion, letter",
    [
        ("<think>B looks wrong</think>The correct answer is (C).", "C"),
        ("Answer: **D**", "D"),
        ("The answer is: $\\boxed{J}$", "J"),
        ("\\boxed{\\text{B}}", "B"),
        ("\\boxed{(E)}", "E"),
        ("B", "B"),
        ("(H).", "H"),
        ("**Answer: (F)**", "F"),
        ("Final answer: G) 17", "G"),
        ("I think the answer is a trick. Answer: b", "B"),
        ("Answer: A\nWait, no. Answer: C", "C"),
        ("A quick look says nothing", None),
        ("<think>Answer: A</think>", None),
        ("Answer: K", None),
    ],
)
def test_extract_choice(completion, letter):
    assert extract_choice(completion) == letter


def test_mcq_scores_and_ground_truth_forms():
    reward = MultipleChoiceReward()
    samples = [
        RewardSample(completion="Answer: C", ground_truth="C"),
        RewardSample(completion="Answer: C", ground_truth="(c)"),
        RewardSample(completion="Answer: C", ground_truth=2),
        RewardSample(completion="Answer: B", ground_truth="C"),
        RewardSample(completion="no idea", ground_truth="C"),
        RewardSample(completion="Answer: C", ground_truth="Z"),
        RewardSample(completion="Answer: E", ground_truth="A", metadata={"choices": ["1", "2", "3", "4"]}),
    ]
    results = reward.score(samples)
    assert [r.score for r in results] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert results[4].components == {"extracted": 0.0}
    assert results[5].status is RewardStatus.INVALID_INPUT
    assert results[6].ok and results[6].components == {"extracted": 0.0}  # E is not an option of 4 choices


# -- tool_call -------------------------------------------------------------------------------------------------------

GT = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 5}}, {"name": "time", "arguments": {}}]


def reply(calls: object, think: str = "<think>plan</think>", tag: str = "tool_call") -> str:
    return f"{think}<{tag}>{json.dumps(calls)}</{tag}>"


def tool_score(completion: str, gt: object = GT) -> tuple[float, RewardStatus]:
    [r] = ToolCallReward().score([RewardSample(completion=completion, ground_truth=gt)])
    return r.score, r.status


def test_tool_call_exact_multiset_match():
    reordered = [{"name": "time", "arguments": {}}, {"arguments": {"days": 5, "city": "Paris"}, "name": "get_weather"}]
    assert tool_score(reply(GT)) == (1.0, RewardStatus.OK)
    assert tool_score(reply(reordered)) == (1.0, RewardStatus.OK)  # call order and key order ignored
    assert tool_score(reply(GT, tag="TOOLCALL")) == (1.0, RewardStatus.OK)  # Nano form


@pytest.mark.parametrize(
    "days",
    ["5", 5.0, True, None, [5]],
)
def test_tool_call_values_compared_exactly(days):
    calls = [{"name": "get_weather", "arguments": {"city": "Paris", "days": days}}, {"name": "time", "arguments": {}}]
    assert tool_score(reply(calls))[0] == 0.0


def test_tool_call_list_order_matters_and_multiset_counts():
    gt = [{"name": "f", "arguments": {"xs": [1, 2]}}]
    assert tool_score(reply([{"name": "f", "arguments": {"xs": [1, 2]}}]), gt)[0] == 1.0
    assert tool_score(reply([{"name": "f", "arguments": {"xs": [2, 1]}}]), gt)[0] == 0.0
    twice = [{"name": "f", "arguments": {"xs": [1, 2]}}] * 2
    assert tool_score(reply(twice), gt)[0] == 0.0
    assert tool_score(reply(twice), twice)[0] == 1.0


def test_tool_call_single_object_and_empty_list():
    one = {"name": "time", "arguments": {}}
    assert tool_score(reply(one), [one])[0] == 1.0
    assert tool_score(reply(one), one)[0] == 1.0
    assert tool_score(reply([]), [])[0] == 1.0
    assert tool_score(reply([]), GT)[0] == 0.0
    assert tool_score(reply(GT), [])[0] == 0.0


def test_tool_call_reads_every_block_and_needs_think():
    wrong = [{"name": "nope", "arguments": {}}]
    # Every block's calls count (parallel calls one block each): an extra wrong call is a wrong reply either way.
    assert tool_score(reply(wrong) + "<tool_call>" + json.dumps(GT) + "</tool_call>")[0] == 0.0
    assert tool_score(reply(GT) + "<tool_call>" + json.dumps(wrong) + "</tool_call>")[0] == 0.0
    assert tool_score(reply(GT, think=""))[0] == 0.0
    assert tool_score(reply(GT, think="</think><think>"))[0] == 0.0
    assert tool_score(reply(GT, think="<think>unclosed"))[0] == 0.0
    assert (
        ToolCallReward(require_think=False)
        .score([RewardSample(completion=reply(GT, think=""), ground_truth=GT)])[0]
        .score
        == 1.0
    )


@pytest.mark.parametrize(
    "block",
    [
        "not json",
        '[{"name": "time"}]',  # no arguments
        '[{"arguments": {}}]',  # no name
        '[{"name": "time", "arguments": [1]}]',
        "[1, 2]",
        '"time"',
        "[" * 5000 + "]" * 5000,
    ],
)
def test_tool_call_malformed_reply_scores_zero(block):
    [r] = ToolCallReward().score(
        [RewardSample(completion=f"<think></think><tool_call>{block}</tool_call>", ground_truth=GT)]
    )
    assert r.ok and r.score == 0.0 and r.components["format"] == 0.0 and r.message


@pytest.mark.parametrize("gt", [None, "{not json", [{"name": "x"}], [{"arguments": {}}], 5, [["a"]]])
def test_tool_call_malformed_ground_truth_is_invalid_input(gt):
    assert tool_score(reply(GT), gt) == (0.0, RewardStatus.INVALID_INPUT)


def test_tool_call_ground_truth_as_json_string_and_string_arguments():
    gt = json.dumps([{"name": "time", "arguments": json.dumps({"tz": "UTC"})}])
    assert tool_score(reply([{"name": "time", "arguments": {"tz": "UTC"}}]), gt)[0] == 1.0


def test_canonical_and_last_block_helpers():
    assert canonical({"a": 1, "b": [1.0]}) == canonical({"b": [1.0], "a": 1})
    assert canonical(1) != canonical(1.0) != canonical(True)
    assert last_tool_block("<tool_call>[1]</tool_call><TOOLCALL>[2]</TOOLCALL>") == "[2]"
    assert last_tool_block("<tool_call>" * 10000) is None
