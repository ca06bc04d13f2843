"""Adapters for TRL, verl, NeMo-RL and OpenRLHF, and the ``rewards`` CLI."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from nemotron_plugins.cli.main import main
from nemotron_plugins.rewards.adapters import (
    NemoRLRewardEnvironment,
    StatusPolicy,
    compute_score,
    make_openrlhf_reward_func,
    make_trl_reward_func,
    make_verl_compute_score,
    reward_func,
)


def test_trl_reward_func_text_and_conversational():
    f = make_trl_reward_func({"gate": ["think_format", "math"]}, name="format_x_math", in_process=True)
    assert f.__name__ == "format_x_math"
    assert list(inspect.signature(f).parameters)[:2] == ["prompts", "completions"]
    prompts = [[{"role": "system", "content": "detailed thinking on"}, {"role": "user", "content": "2+2?"}]] * 3
    completions = [
        [{"role": "assistant", "content": "<think>2+2</think>4"}],
        [{"role": "assistant", "content": "4"}],
        [{"role": "assistant", "content": "<think>x</think>5"}],
    ]
    out = f(prompts=prompts, completions=completions, ground_truth=["4", "4", "4"], trainer_state=object())
    assert out == [1.0, 0.0, 0.0]
    text = make_trl_reward_func("math", in_process=True)
    assert text(prompts=["q", "q"], completions=["<think></think>7", "8"], solution=["7", "7"]) == [1.0, 0.0]


def test_trl_reasoning_column_and_none_for_invalid():
    f = make_trl_reward_func("think_format", in_process=True)
    out = f(prompts=["q", "q", "q"], completions=["plain", "plain", "plain"], reasoning=["off", "on", "bogus"])
    assert out == [1.0, 0.0, None]
    strict = make_trl_reward_func(
        "think_format", policy=StatusPolicy(none_on=(), status_scores={"invalid_input": -1}), in_process=True
    )
    assert strict(prompts=["q"], completions=["plain"], reasoning=["bogus"]) == [-1.0]


def test_verl_compute_score():
    assert compute_score("openai/gsm8k", "<think>..</think>#### 72\nThe answer is 72", "72")["score"] == 1.0
    mcq = compute_score("gpqa_diamond", "Answer: (B)", "B")
    assert mcq["score"] == 1.0 and mcq["extracted"] == 1.0 and mcq["status_ok"] == 1.0
    tool = compute_score(
        "xyz",
        '<think></think><tool_call>{"name": "f", "arguments": {}}</tool_call>',
        [{"name": "f", "arguments": {}}],
        extra_info={"reward": "tool_call"},
    )
    assert tool["score"] == 1.0
    custom = make_verl_compute_score({"gate": ["think_format", "math"]}, in_process=True)
    assert custom("math", "<think>a</think>3", "3", {"reasoning": "on"})["score"] == 1.0
    assert custom("math", "3", "3", {"reasoning": "on"})["score"] == 0.0


def test_nemo_rl_environment_step():
    env = NemoRLRewardEnvironment("math", in_process=True)
    logs = [
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think></think>2"}],
        [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "<think></think>3"}],
    ]
    ret = env.step(logs, [{"ground_truth": "2"}, {"ground_truth": "2"}])
    assert torch.equal(ret.rewards, torch.tensor([1.0, 0.0]))
    assert ret.terminateds.all() and len(ret.observations) == 2 and ret.answers[0] == "<think></think>2"
    _, metrics = env.global_post_process_and_metrics({"total_reward": ret.rewards})
    assert metrics["math/mean_reward"] == pytest.approx(0.5)


def test_openrlhf_reward_func(monkeypatch):
    f = make_openrlhf_reward_func("math", in_process=True)
    out = f(["Q: 2+2? <think></think>4", "Q: 2+2? 5"], ["Q: 2+2? ", "Q: 2+2? "], ["4", "4"])
    assert torch.equal(out["rewards"], torch.tensor([1.0, 0.0]))
    assert set(out["extra_logs"]) == {"extracted", "boxed", "status_ok"}
    assert torch.equal(
        make_openrlhf_reward_func("math", return_dict=False, in_process=True)(["a 4"], ["a "], ["4"]),
        torch.tensor([1.0]),
    )
    monkeypatch.setenv("NEMOTRON_REWARD", json.dumps({"reward": "mcq"}))
    assert reward_func(["q Answer: C"], ["q "], ["C"])["rewards"].tolist() == [1.0]


# -- CLI ---------------------------------------------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_cli_score_in_order(tmp_path, capsys):
    rows = [
        {"completion": "<think>a</think>\\boxed{4}", "ground_truth": "4", "metadata": {"reasoning": "on"}},
        {"completion": "5", "ground_truth": "4", "prompt": "2+2?"},
        "",
        {"completion": "4", "ground_truth": None},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    assert main(["rewards", "score", "--reward", "math", "--input", str(src)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(x["score"], x["status"]) for x in lines] == [(1.0, "ok"), (0.0, "ok"), (0.0, "invalid_input")]


def test_cli_spec_and_options(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "42", "ground_truth": "42"}])
    assert main(["rewards", "score", "--reward", "math", "--options", '{"mode": "boxed"}', "--input", str(src)]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 0.0
    out = tmp_path / "out.jsonl"
    spec = '{"weighted": {"math": 2.0}}'
    assert main(["rewards", "score", "--reward", spec, "--input", str(src), "--output", str(out)]) == 0
    assert json.loads(out.read_text())["score"] == 2.0


@pytest.mark.parametrize(
    "bad_line, fragment",
    [
        ("{not json", "line 2: not valid JSON"),
        ("[1, 2]", "line 2: expected a JSON object"),
        ('{"ground_truth": "1"}', "line 2: 'completion' must be a string"),
        ('{"completion": "1", "metadata": 3}', "line 2: 'metadata' must be an object"),
        ('{"completion": "1", "extra": 3}', "line 2: unknown field"),
    ],
)
def test_cli_bad_line_names_line_number(tmp_path, capsys, bad_line, fragment):
    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "1", "ground_truth": "1"}, bad_line])
    with pytest.raises(SystemExit) as exc:
        main(["rewards", "score", "--reward", "math", "--input", str(src)])
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and captured.out == ""


def test_cli_unknown_reward(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [{"completion": "1"}])
    with pytest.raises(SystemExit):
        main(["rewards", "score", "--reward", "nope", "--input", str(src)])
    assert "no rewards plugin named 'nope'" in capsys.readouterr().err
