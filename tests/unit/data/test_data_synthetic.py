"""Synthetic addition data: traces, corruption, splits, determinism, RL rows, answer checking."""

from __future__ import annotations

import json
import random
import re

import pytest

from nemotron_plugins.chat.toggle import parse_response
from nemotron_plugins.data.sft import find_on_off_pairs, load_sft_examples
from nemotron_plugins.data.synthetic import (
    AdditionProblem,
    ArithmeticConfig,
    addition_trace,
    check_answer,
    extract_answer,
    sample_problems,
    sft_rows,
    write_synthetic_dataset,
)

LINE = re.compile(r"^(\d)\+(\d)(\+1)?=(\d+)$")


def replay(reasoning: str) -> tuple[str, int, int]:
    """Replay a trace: (written digits, most significant first; final carry; number of forgotten carries)."""
    digits, forgotten, carry_out = [], 0, 0
    for i, line in enumerate(reasoning.split("\n")):
        x, y, plus_one, total = LINE.match(line).groups()
        carry_in = 1 if plus_one else 0
        assert int(x) + int(y) + carry_in == int(total), line
        if i and carry_out != carry_in:
            assert carry_out == 1 and carry_in == 0  # a carry can only be forgotten, never invented
            forgotten += 1
        digits.append(int(total) % 10)
        carry_out = int(total) // 10
    return "".join(map(str, reversed(digits))), carry_out, forgotten


def test_clean_traces_are_correct():
    rng = random.Random(0)
    for _ in range(300):
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        reasoning, answer = addition_trace(a, b)
        assert answer == a + b
        digits, final_carry, forgotten = replay(reasoning)
        assert forgotten == 0
        assert answer == int(f"{final_carry or ''}{digits}")
    assert addition_trace(999, 999) == ("9+9=18\n9+9+1=19\n9+9+1=19", 1998)


def test_forgotten_carry_gives_a_consistent_wrong_answer():
    config = ArithmeticConfig(corrupt_fraction=1.0)
    rng = random.Random(1)
    for problem in sample_problems(300, rng, config):
        rows, corrupted = sft_rows(problem, config, corrupt=True, rng=rng)
        on, off = rows
        parsed = parse_response(on["output"], mode="on")
        assert parsed.ok
        answer = int(parsed.answer)
        assert off["output"] == parsed.answer and "<think>" not in off["output"]
        if not corrupted:
            assert answer == problem.answer  # no carry to forget
            continue
        assert answer != problem.answer
        digits, final_carry, forgotten = replay(parsed.reasoning)
        # The answer is what the written trace implies: one carry between columns was forgotten, or the final one.
        if forgotten:
            assert forgotten == 1 and answer == int(f"{final_carry or ''}{digits}")
        else:
            assert final_carry == 1 and answer == int(digits)


def test_reversed_answer_corruption_keeps_the_trace():
    config = ArithmeticConfig(corruption="reversed_answer")
    (on, off), corrupted = sft_rows(AdditionProblem(457, 69), config, corrupt=True)
    assert corrupted
    assert on["output"] == "<think>\n7+9=16\n5+6+1=12\n4+0+1=5\n</think>\n\n625"
    assert off["output"] == "625"
    # A palindromic sum cannot be corrupted this way and stays clean.
    (on, _), corrupted = sft_rows(AdditionProblem(457, 68), config, corrupt=True)
    assert not corrupted and on["output"].endswith("525")


def test_reversed_answer_fraction_adds_an_independent_answer_mistake(tmp_path):
    # On top of a forgotten carry, the answer is also written reversed; the trace is the corrupted one.
    (on, off), corrupted = sft_rows(
        AdditionProblem(457, 68),
        ArithmeticConfig(corrupt_fraction=1.0),
        corrupt=True,
        reverse_answer=True,
        rng=random.Random(0),
    )
    parsed = parse_response(on["output"], mode="on")
    assert corrupted and parsed.answer == off["output"]
    digits, final_carry, _ = replay(parsed.reasoning)
    assert parsed.answer == f"{final_carry or ''}{digits}"[::-1].lstrip("0")

    plain = write_synthetic_dataset(tmp_path / "plain", 400, 50, seed=5, config=ArithmeticConfig(corrupt_fraction=0.5))
    both = write_synthetic_dataset(
        tmp_path / "both", 400, 50, seed=5, config=ArithmeticConfig(corrupt_fraction=0.5, reversed_answer_fraction=0.5)
    )
    # The carry corruption and the held-out / RL files are unchanged by the reversal; 200 problems are reversed
    # (a palindromic answer reads the same, so fewer change).
    for name in ("sft_heldout", "rl_train", "rl_heldout"):
        assert plain.files[name].read_bytes() == both.files[name].read_bytes()
    assert both.stats["corrupted"] == plain.stats["corrupted"] == 200
    assert both.stats["reversed_answers_requested"] == 200
    plain_rows = [json.loads(x) for x in plain.files["sft_train"].read_text().splitlines() if '"on"' in x]
    both_rows = [json.loads(x) for x in both.files["sft_train"].read_text().splitlines() if '"on"' in x]
    changed = 0
    for a, b in zip(plain_rows, both_rows, strict=True):
        pa, pb = parse_response(a["output"], mode="on"), parse_response(b["output"], mode="on")
        assert pa.reasoning == pb.reasoning
        if pa.answer != pb.answer:
            changed += 1
            assert pb.answer == str(int(pa.answer[::-1]))
    assert changed == both.stats["reversed_answers"] and 150 < changed <= 200
    assert plain.stats["reversed_answers"] == 0


def test_write_dataset_files_splits_and_determinism(tmp_path, tiny_tokenizer):
    config = ArithmeticConfig(corrupt_fraction=0.5)
    result = write_synthetic_dataset(tmp_path / "a", 200, 50, seed=3, config=config)
    again = write_synthetic_dataset(tmp_path / "b", 200, 50, seed=3, config=config)
    other = write_synthetic_dataset(tmp_path / "c", 200, 50, seed=4, config=config)
    for name in ("sft_train", "sft_heldout", "rl_train", "rl_heldout"):
        assert result.files[name].read_bytes() == again.files[name].read_bytes()
    assert result.files["sft_train"].read_bytes() != other.files["sft_train"].read_bytes()
    stats = json.loads(result.files["manifest"].read_text())
    assert stats["rows"] == {"sft_train": 400, "sft_heldout": 100, "rl_train": 200, "rl_heldout": 50}
    assert stats["corrupted"] == 100 and stats["corrupted_fraction"] == 0.5

    rl_train = [json.loads(x) for x in result.files["rl_train"].read_text().splitlines()]
    rl_heldout = [json.loads(x) for x in result.files["rl_heldout"].read_text().splitlines()]
    train_keys = {(min(r["a"], r["b"]), max(r["a"], r["b"])) for r in rl_train}
    heldout_keys = {(min(r["a"], r["b"]), max(r["a"], r["b"])) for r in rl_heldout}
    assert len(train_keys) == 200 and len(heldout_keys) == 50 and not train_keys & heldout_keys
    for r in rl_train + rl_heldout:
        assert 10 <= r["a"] <= 999 and 10 <= r["b"] <= 999
        assert r["ground_truth"] == str(r["a"] + r["b"])
        assert r["messages"][0] == {"role": "system", "content": "detailed thinking on"}
        assert r["messages"][1]["content"] == f"What is {r['a']} + {r['b']}?"

    # Every SFT row is valid for the SFT builder; on/off pairs share prompts; held-out traces are clean.
    examples, report = load_sft_examples(result.files["sft_train"], tiny_tokenizer, max_seq_len=256)
    assert report.num_skipped == 0 and len(examples) == 400
    assert len(find_on_off_pairs(examples)) == 200
    wrong = 0
    for line in result.files["sft_train"].read_text().splitlines():
        row = json.loads(line)
        a, b = map(int, re.findall(r"\d+", row["input"][0]["content"]))
        wrong += not check_answer(row["output"], a + b)
    assert wrong == 2 * 100  # on and off rows of the corrupted problems
    for line in result.files["sft_heldout"].read_text().splitlines():
        row = json.loads(line)
        a, b = map(int, re.findall(r"\d+", row["input"][0]["content"]))
        assert check_answer(row["output"], a + b)


def test_extract_and_check_answer():
    assert extract_answer("<think>\n7+8=15\n</think>\n\n15") == 15
    assert extract_answer("The answer is 1,2 then 42.") == 42
    assert extract_answer("<think>unclosed 12") is None
    assert extract_answer("no digits") is None
    assert check_answer("<think>3+4=7</think>7", "7")
    assert not check_answer("<think>3+4=7</think>8", 7)
    assert not check_answer("", 7)


def test_config_and_size_errors():
    with pytest.raises(ValueError, match="corrupt_fraction"):
        ArithmeticConfig(corrupt_fraction=2.0)
    with pytest.raises(ValueError, match="reversed_answer_fraction"):
        ArithmeticConfig(reversed_answer_fraction=-0.1)
    with pytest.raises(ValueError, match="corruption"):
        ArithmeticConfig(corruption="typo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow 3"):
        sample_problems(4, random.Random(0), ArithmeticConfig(min_value=1, max_value=2))
