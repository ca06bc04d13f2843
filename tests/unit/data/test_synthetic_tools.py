"""The synthetic tool task: gold calls, the real ``tool_call`` reward on rendered replies, held-out disjointness, and
the path data -> chat template (tools in the system turn) -> reward at SFT and RL time."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nemotron_plugins.chat.render import render_chat
from nemotron_plugins.chat.tokenizer import build_tiny_tokenizer
from nemotron_plugins.data.sft import build_sft_examples, row_tools
from nemotron_plugins.data.sources import DataSourceError, read_prompt_rows
from nemotron_plugins.data.synthetic_tools import (
    SIBLINGS,
    SYSTEM_PROMPT,
    TOOLS,
    ToolTaskConfig,
    corrupt,
    make_prompt,
    render_prose_reply,
    render_reply,
    think_text,
    write_tool_task,
)
from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.tool_call import ToolCallReward
from nemotron_plugins.rl.controller import encode_prompts

NANO = "llama-nemotron-nano"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tool_task")
    write_tool_task(out, sft_rows=400, rl_prompts=200, heldout=200, seed=3)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _score(completion: str, gold: object) -> object:
    return ToolCallReward().score([RewardSample(completion=completion, ground_truth=gold)])[0]


def test_every_gold_call_rendered_in_the_format_scores_one_with_the_real_reward() -> None:
    rng = random.Random(0)
    config = ToolTaskConfig()
    two_calls = 0
    for _ in range(300):
        prompt = make_prompt(rng, config)
        two_calls += len(prompt.calls) == 2
        reply = render_reply(prompt.calls, think_text(prompt.calls))
        result = _score(reply, prompt.calls)
        assert result.score == 1.0, (reply, result.message)
        # The gold as a JSON string (as a parquet column may hold it) scores the same.
        assert _score(reply, json.dumps(prompt.calls)).score == 1.0
        # Every needed tool is offered, the offer has 2-3 tools, and the arguments come from the request.
        names = [t["name"] for t in prompt.tools]
        assert {c["name"] for c in prompt.calls} <= set(names) and 2 <= len(names) <= 3
        for call in prompt.calls:
            for value in call["arguments"].values():
                assert str(value) in prompt.request
    assert 20 < two_calls < 120  # two_call_fraction 0.2 of 300


def test_a_wrong_argument_or_tool_scores_zero_with_the_format_intact() -> None:
    rng = random.Random(1)
    config = ToolTaskConfig()
    kinds = set()
    for _ in range(200):
        prompt = make_prompt(rng, config)
        wrong, kind = corrupt(prompt.calls, rng)
        kinds.add(kind)
        # The sibling tool, a number as a string, or the calls unchanged (no_call: no call block): the request's values are never
        # replaced by others.
        changed = 0
        for gold_call, call in zip(prompt.calls, wrong, strict=True):
            assert {k: str(v) for k, v in call["arguments"].items()} == {
                k: str(v) for k, v in gold_call["arguments"].items()
            }
            changed += call != gold_call
            if call["name"] != gold_call["name"]:
                assert kind == "sibling_tool" and call["name"] == SIBLINGS[gold_call["name"]]
        assert changed == (kind != "no_call")
    assert kinds == {"sibling_tool", "string_number", "no_call"}
    # The think block restates the tools and the values the reply uses.
    calls = [
        {"name": "weather", "arguments": {"city": "oslo"}},
        {"name": "multiply", "arguments": {"a": "3", "b": 4}},
    ]
    assert think_text(calls) == "call weather oslo then multiply 3 4"

    gold = [{"name": "add", "arguments": {"a": 3, "b": 4}}]
    assert _score(render_prose_reply(gold), gold).score == 0.0  # no call block (the no_call corruption)
    assert _score(render_reply([{"name": "add", "arguments": {"a": 3, "b": 5}}], "call add"), gold).score == 0.0
    assert _score(render_reply([{"name": "add", "arguments": {"a": "3", "b": 4}}], "call add"), gold).score == 0.0


def test_corruption_weights_are_drawn_and_checked() -> None:
    rng = random.Random(2)
    only = ToolTaskConfig(corruption_weights={"sibling_tool": 1.0})
    prompt = make_prompt(rng, only)
    assert all(corrupt(prompt.calls, rng, only.corruption_weights)[1] == "sibling_tool" for _ in range(20))
    for bad in ({"wrong_value": 1.0}, {}, {"no_call": -1.0}, {"no_call": 0.0}):
        with pytest.raises(ValueError, match="corruption_weights"):
            ToolTaskConfig(corruption_weights=bad)


def test_a_malformed_block_fails_the_format_and_a_malformed_gold_is_a_failure_status_not_a_zero() -> None:
    gold = [{"name": "weather", "arguments": {"city": "oslo"}}]
    broken = '<think>call weather</think><TOOLCALL>[{"name": "weather", "arguments": {"city": "oslo"}</TOOLCALL>'
    result = _score(broken, gold)
    assert result.status == RewardStatus.OK and result.score == 0.0 and result.components["format"] == 0.0
    assert "not valid" in result.message
    no_think = '<TOOLCALL>[{"name": "weather", "arguments": {"city": "oslo"}}]</TOOLCALL>'
    assert _score(no_think, gold).components["format"] == 0.0  # Tool-N1: reasoning format required
    bad_gold = _score(render_reply(gold, "call weather"), '[{"name": "weather"')
    assert bad_gold.status == RewardStatus.INVALID_INPUT and "malformed ground_truth" in bad_gold.message


def test_written_files_sft_correct_share_and_heldout_requests_never_trained_on(task_dir: Path, tmp_path: Path) -> None:
    sft = _rows(task_dir / "sft.jsonl")
    train = _rows(task_dir / "prompts_train.jsonl")
    heldout = _rows(task_dir / "prompts_heldout.jsonl")
    assert (len(sft), len(train), len(heldout)) == (400, 200, 200)
    # The SFT replies are right only part of the time, and the real reward agrees with the generator's label.
    reward = ToolCallReward()
    scores = reward.score([RewardSample(completion=r["output"], ground_truth=r["ground_truth"]) for r in sft])
    for row, result in zip(sft, scores, strict=True):
        assert result.score == float(row["corruption"] == "correct"), row
    share = sum(r.score for r in scores) / len(scores)
    assert 0.4 < share < 0.6
    # Held-out prompts are distinct and their requests appear in no training file.
    held_requests = {r["messages"][-1]["content"] for r in heldout}
    trained = {r["input"][-1]["content"] for r in sft} | {r["messages"][-1]["content"] for r in train}
    assert not held_requests & trained
    assert len({json.dumps([r["messages"], r["tools"]]) for r in heldout}) == len(heldout)
    # Same arguments, byte-identical files.
    write_tool_task(tmp_path, sft_rows=400, rl_prompts=200, heldout=200, seed=3)
    for name in ("sft.jsonl", "prompts_train.jsonl", "prompts_heldout.jsonl"):
        assert (tmp_path / name).read_bytes() == (task_dir / name).read_bytes()


def _expected_prompt(tools: list[dict], request: str) -> str:
    # The Nano template's system turn, written out by hand: system text, a blank line, the tools as JSON.
    return (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"{SYSTEM_PROMPT}\n\n<AVAILABLE_TOOLS>{json.dumps(tools, ensure_ascii=False)}</AVAILABLE_TOOLS><|eot_id|>"
        f"<|start_header_id|>user<|end_header_id|>\n\n{request}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_rl_prompts_render_the_rows_tools_into_the_system_turn_byte_exactly(task_dir: Path) -> None:
    tokenizer = build_tiny_tokenizer(NANO)
    rows = read_prompt_rows(task_dir / "prompts_heldout.jsonl", splits=[], reasoning="on", limit=20)
    encoded = encode_prompts(tokenizer, rows, template=NANO)
    for row, ids in zip(rows, encoded, strict=True):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        assert text == _expected_prompt(row["tools"], row["messages"][-1]["content"])
        # ... and exactly what transformers' apply_chat_template makes of the same conversation and tools.
        assert text == tokenizer.apply_chat_template(
            row["messages"], tools=row["tools"], tokenize=False, add_generation_prompt=True
        )
        assert row["ground_truth"] and all(c["name"] in {t["name"] for t in row["tools"]} for c in row["ground_truth"])


def test_sft_examples_carry_the_rows_tools_and_the_reply_as_target(task_dir: Path) -> None:
    tokenizer = build_tiny_tokenizer(NANO)
    rows = _rows(task_dir / "sft.jsonl")[:10]
    examples, report = build_sft_examples(rows, tokenizer, max_seq_len=1024, strict=True, template=NANO)
    assert report.kept == 10
    for row, example in zip(rows, examples, strict=True):
        prompt = tokenizer.decode(example.input_ids[: example.prompt_length], skip_special_tokens=False)
        assert prompt == _expected_prompt(row["tools"], row["input"][-1]["content"])
        target = tokenizer.decode(example.target_ids, skip_special_tokens=False)
        assert target == row["output"] + "<|eot_id|>"


def test_tools_on_a_template_without_tools_or_of_a_bad_shape_are_refused_naming_the_row(tmp_path: Path) -> None:
    tokenizer = build_tiny_tokenizer()
    row = {
        "input": [{"role": "user", "content": "add 1 and 2"}],
        "output": render_reply([{"name": "add", "arguments": {"a": 1, "b": 2}}], "call add"),
        "reasoning": "on",
        "system_prompt": SYSTEM_PROMPT,
        "tools": [TOOLS["add"]],
    }
    _, report = build_sft_examples([row], tokenizer, max_seq_len=1024, template="llama-nemotron-super")
    assert report.kept == 0 and "bad_messages" in report.skipped
    _, report = build_sft_examples([{**row, "tools": "not json"}], tokenizer, max_seq_len=1024, template=NANO)
    assert report.kept == 0 and "bad_field" in report.skipped
    assert row_tools({"tools": json.dumps([TOOLS["add"]])}) == [TOOLS["add"]]
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        json.dumps({"messages": row["input"], "ground_truth": [], "tools": {"name": "add"}}) + "\n", encoding="utf-8"
    )
    with pytest.raises(DataSourceError, match=r"prompts.jsonl:1: 'tools' must be a list"):
        read_prompt_rows(path, splits=[], reasoning="both", limit=None)


def test_render_chat_and_the_rows_tools_agree_for_a_two_call_prompt() -> None:
    rng = random.Random(7)
    config = ToolTaskConfig(two_call_fraction=1.0)
    prompt = make_prompt(rng, config)
    assert len(prompt.calls) == 2
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.request}]
    text = render_chat(messages, template=NANO, add_generation_prompt=True, tools=prompt.tools)
    assert text == _expected_prompt(prompt.tools, prompt.request)
    # The reply format is the template's own serialisation of the assistant's tool calls.
    history = render_chat(
        [*messages, {"role": "assistant", "content": "", "tool_calls": prompt.calls}],
        template=NANO,
        tools=prompt.tools,
    )
    assert history.endswith(render_reply(prompt.calls, "x").split("</think>")[1] + "<|eot_id|>")


def test_validation_refuses_rows_with_tools_on_a_template_without_tools(task_dir: Path) -> None:
    from nemotron_plugins.launch.build import build_recipe
    from nemotron_plugins.launch.validation import check_data_schema

    path = str(task_dir / "prompts_train.jsonl")
    config = build_recipe("tiny_tool_grpo_cpu", [f"data.path={path}"])
    assert check_data_schema(config, "data.path", path) == []
    config = build_recipe("tiny_tool_grpo_cpu", [f"data.path={path}", "data.chat_template=llama-nemotron-super"])
    (error,) = check_data_schema(config, "data.path", path)
    assert "row 1: the row has 'tools'" in error and "llama-nemotron-nano" in error
