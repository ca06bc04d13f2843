"""CrossThink-style data blends: templates, the verifiable filter, weighted deterministic sampling, validation."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from nemotron_plugins.data.blend import (
    MCQ_INSTRUCTION,
    OPEN_ENDED_INSTRUCTION,
    BlendError,
    apply_template,
    apportion,
    build_prompt_blend,
    build_sft_blend,
    default_total,
    sample_blend,
)
from nemotron_plugins.launch.build import build_recipe
from nemotron_plugins.launch.recipe_config import BlendSource, DataConfig, RewardSpec
from nemotron_plugins.launch.validation import blend_errors, check_inputs

FIXTURES = Path(__file__).parent / "blend_fixtures"
SCIENCE, MATH, QA = (str(FIXTURES / n) for n in ("science_mcq.jsonl", "math_as_is.jsonl", "qa_open.jsonl"))
REWARDS = [RewardSpec(name="math"), RewardSpec(name="mcq")]
MATH_ONLY = [RewardSpec(name="math")]


def _write_pool(path: Path, n: int, prefix: str) -> str:
    rows = [
        {"id": f"{prefix}-{i}", "messages": [{"role": "user", "content": f"{i}+1?"}], "ground_truth": str(i + 1)}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------------------------


def test_mcq_template_writes_lettered_options_and_the_letter_as_gold() -> None:
    row = {
        "id": "q",
        "question": "Which gas do plants take in?",
        "options": ["Oxygen", "Carbon dioxide", "Helium"],
        "ground_truth": "Carbon dioxide",
        "system_prompt": "detailed thinking off",
        "category": "science",
    }
    out = apply_template(row, "mcq")
    assert out["messages"] == [
        {"role": "system", "content": "detailed thinking off"},
        {
            "role": "user",
            "content": "Which gas do plants take in?\n\nOptions:\n(A) Oxygen\n(B) Carbon dioxide\n(C) Helium\n\n"
            'Answer with the letter of the correct option on the last line, as "Answer: X".',
        },
    ]
    assert out["ground_truth"] == "B"
    assert out["metadata"] == {"choices": ["Oxygen", "Carbon dioxide", "Helium"]}
    assert out["category"] == "science" and "options" not in out and "question" not in out
    assert out["messages"][1]["content"].endswith(MCQ_INSTRUCTION)
    # The gold as an index, a lowercase letter in parentheses, or with the options as a letter -> text mapping.
    assert apply_template({**row, "ground_truth": 2}, "mcq")["ground_truth"] == "C"
    assert apply_template({**row, "ground_truth": "(a)"}, "mcq")["ground_truth"] == "A"
    mapped = {**row, "options": {"A": "Oxygen", "B": "Carbon dioxide"}, "ground_truth": "B"}
    assert apply_template(mapped, "mcq")["metadata"]["choices"] == ["Oxygen", "Carbon dioxide"]


def test_open_ended_template_drops_the_options_and_keeps_the_answer_text() -> None:
    row = {
        "question": "Capital of France?",
        "options": ["Berlin", "Paris", "Rome"],
        "answer": "B",
        "messages": [{"role": "system", "content": "detailed thinking on"}, {"role": "user", "content": "ignored"}],
    }
    out = apply_template(row, "open_ended")
    assert out["messages"] == [
        {"role": "system", "content": "detailed thinking on"},
        {"role": "user", "content": "Capital of France?\n\nGive your final answer within \\boxed{}."},
    ]
    assert OPEN_ENDED_INSTRUCTION == "Give your final answer within \\boxed{}."
    assert out["ground_truth"] == "Paris" and "answer" not in out and "metadata" not in out
    # Without options the question is the last user turn and the gold is the answer text as given.
    plain = {"messages": [{"role": "user", "content": "How many sides has a hexagon?"}], "ground_truth": "6"}
    out = apply_template(plain, "open_ended")
    assert out["messages"] == [
        {"role": "user", "content": f"How many sides has a hexagon?\n\n{OPEN_ENDED_INSTRUCTION}"}
    ]
    assert out["ground_truth"] == "6"


def test_as_is_keeps_the_row_unchanged() -> None:
    row = {"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": "4", "options": ["x"]}
    assert apply_template(row, "as_is") == row


# ---------------------------------------------------------------------------------------------------------------
# Filtering to verifiable rows
# ---------------------------------------------------------------------------------------------------------------


def _fixture_blend(**data: object) -> DataConfig:
    return DataConfig(
        blend=[
            BlendSource(path=SCIENCE, template="mcq", reward="mcq", domain="science"),
            BlendSource(path=MATH, reward="math", domain="math"),
            BlendSource(path=QA, template="open_ended", reward="math", max_answer_words=5, domain="math"),
        ],
        **data,
    )


def test_filter_counts_drops_per_source_and_reason(tmp_path, capsys) -> None:
    rows, report = build_prompt_blend(_fixture_blend(), rewards=REWARDS, seed=3, output_dir=tmp_path)
    science, math_rows, qa = report.sources
    assert (science.read, science.kept) == (9, 5)
    assert science.dropped == {"bad_row": 1, "no_options": 1, "gold_not_an_option": 1, "no_question": 1}
    assert science.example_lines == {"bad_row": [7], "no_options": [5], "gold_not_an_option": [6], "no_question": [8]}
    assert (math_rows.read, math_rows.kept) == (6, 3)
    # Prose gold and unbalanced LaTeX cannot be checked by math-verify; a row without ground_truth is malformed.
    assert math_rows.dropped == {"unverifiable": 2, "bad_row": 1}
    assert math_rows.example_lines["unverifiable"] == [3, 5]
    assert "prose" in math_rows.first_detail["unverifiable"]
    assert (qa.read, qa.kept, qa.dropped) == (4, 3, {"answer_too_long": 1})
    # Every kept row's gold passes its reward; each carries its domain and its reward.
    assert {r["id"] for r in rows if r["reward"] == "mcq"} <= {"sci-1", "sci-2", "sci-3", "sci-4", "sci-9"}
    assert all(r["ground_truth"] == "B" for r in rows if r["id"] in ("sci-1", "sci-2", "sci-3", "sci-4"))
    assert Counter(r["domain"] for r in rows) == {"science": 3, "math": 6}
    # The report is printed and written at the start of the run.
    printed = capsys.readouterr().out
    assert "data blend: 9 rows from 3 sources (seed 3)" in printed and "unverifiable: 2 (lines 3, 5)" in printed
    written = json.loads((tmp_path / "data_blend_report.json").read_text())
    assert written["domains"]["math"] == {"kept": 6, "dropped": 4, "drawn": 6, "repeated": 0}
    assert written["sources"][0]["dropped"]["no_options"] == 1


def test_without_a_routed_reward_every_checkable_recipe_reward_must_verify_the_gold() -> None:
    """A row without a reward column is scored by all the recipe's rewards: a letter gold fails math's check of
    ``\\boxed{B}`` only if math cannot read it; rewards without a gold check leave rows counted as unchecked."""
    data = DataConfig(blend=[BlendSource(path=MATH)], splits=["math"])
    _, report = build_prompt_blend(data, rewards=[RewardSpec(name="think_format")], seed=0)
    (source,) = report.sources
    assert source.kept == 5 and source.unchecked == 5 and source.dropped == {"bad_row": 1}
    _, report = build_prompt_blend(data, rewards=[RewardSpec(name="math"), RewardSpec(name="think_format")], seed=0)
    assert report.sources[0].unchecked == 0 and report.sources[0].dropped == {"bad_row": 1, "unverifiable": 2}


def test_splits_and_max_rows_limit_a_source() -> None:
    data = DataConfig(
        blend=[
            BlendSource(path=SCIENCE, template="mcq", reward="mcq", max_rows=2),
            BlendSource(path=QA, template="open_ended", reward="math"),
        ],
        splits=["science", "qa"],
    )
    _, report = build_prompt_blend(data, rewards=REWARDS, seed=0)
    assert report.sources[0].kept == 2 and report.sources[0].dropped == {}
    data = DataConfig(blend=[BlendSource(path=SCIENCE, template="mcq")], splits=["science"])
    _, report = build_prompt_blend(data, rewards=[RewardSpec(name="mcq")], seed=0)
    assert report.sources[0].other_split == 1 and report.sources[0].kept == 4


def test_a_source_left_without_rows_is_an_error_naming_it() -> None:
    data = DataConfig(blend=[BlendSource(path=SCIENCE, template="open_ended", max_answer_words=1)], splits=["chat"])
    with pytest.raises(BlendError, match=r"data\.blend\[0\] .*no usable rows"):
        build_prompt_blend(data, rewards=[RewardSpec(name="mcq")], seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Weighted, deterministic sampling
# ---------------------------------------------------------------------------------------------------------------


def test_weights_are_honoured_within_a_binomial_bound(tmp_path) -> None:
    weights = [1.0, 2.0, 5.0]
    paths = [_write_pool(tmp_path / f"s{i}.jsonl", 400, f"s{i}") for i in range(3)]
    data = DataConfig(
        blend=[
            BlendSource(path=p, weight=w, domain=f"d{i}") for i, (p, w) in enumerate(zip(paths, weights, strict=True))
        ],
        num_train_samples=600,
    )
    rows, report = build_prompt_blend(data, rewards=MATH_ONLY, seed=11)
    assert len(rows) == 600 and report.total == 600
    for i, w in enumerate(weights):
        p = w / sum(weights)
        # The whole blend and its first 200 rows (the order is a shuffle, not source after source).
        for n, part in ((600, rows), (200, rows[:200])):
            count = sum(1 for r in part if r["domain"] == f"d{i}")
            assert abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1, (i, n, count)
        assert report.sources[i].drawn == round(600 * p) and report.sources[i].repeated == 0
    assert len({r["id"] for r in rows}) == 600  # no row repeated while every source has rows left


def test_the_blend_is_deterministic_in_the_seed(tmp_path) -> None:
    paths = [_write_pool(tmp_path / f"s{i}.jsonl", 50, f"s{i}") for i in range(2)]
    data = DataConfig(blend=[BlendSource(path=paths[0], weight=1), BlendSource(path=paths[1], weight=3)])
    first = [r["id"] for r in build_prompt_blend(data, rewards=MATH_ONLY, seed=5)[0]]
    again = [r["id"] for r in build_prompt_blend(data, rewards=MATH_ONLY, seed=5)[0]]
    other = [r["id"] for r in build_prompt_blend(data, rewards=MATH_ONLY, seed=6)[0]]
    assert first == again and first != other
    # Without num_train_samples: the largest blend that repeats no row (source 1's 50 rows are 3/4 of 66).
    assert len(first) == default_total([1, 3], [50, 50]) == 66 and len(set(first)) == 66


def test_an_exhausted_source_is_drawn_again_and_reported(tmp_path) -> None:
    small = _write_pool(tmp_path / "small.jsonl", 5, "small")
    big = _write_pool(tmp_path / "big.jsonl", 100, "big")
    data = DataConfig(blend=[BlendSource(path=small), BlendSource(path=big)], num_train_samples=24)
    rows, report = build_prompt_blend(data, rewards=MATH_ONLY, seed=0)
    assert [s.drawn for s in report.sources] == [12, 12]
    assert [s.repeated for s in report.sources] == [7, 0]
    ids = Counter(r["id"] for r in rows if r["id"].startswith("small"))
    assert len(ids) == 5 and max(ids.values()) - min(ids.values()) <= 1  # every row before any row twice
    assert "repeated 7 (source exhausted)" in report.format()


def test_apportion_and_sample_blend_edges() -> None:
    assert apportion([1, 1, 1], 10) == [4, 3, 3]
    assert apportion([0.2, 0.8], 7) == [1, 6]
    with pytest.raises(ValueError, match="positive weights"):
        apportion([1, 0], 3)
    rows, drawn, repeated = sample_blend([["a"], ["b", "c"]], [1, 1], 4, seed=0)
    assert sorted(rows) == ["a", "a", "b", "c"] and drawn == [2, 2] and repeated == [1, 0]


def test_sft_blend_samples_post_training_rows_and_refuses_templates(tmp_path) -> None:
    def sft_rows(path: Path, n: int, category: str) -> str:
        row = {"input": [{"role": "user", "content": "1+1?"}], "output": "2", "reasoning": "off"}
        lines = [json.dumps({**row, "system_prompt": "detailed thinking off", "category": category})] * n
        path.write_text("\n".join([*lines, "{broken"]) + "\n", encoding="utf-8")
        return str(path)

    a, b = sft_rows(tmp_path / "a.jsonl", 10, "math"), sft_rows(tmp_path / "b.jsonl", 10, "chat")
    data = DataConfig(blend=[BlendSource(path=a, weight=1), BlendSource(path=b, weight=1)], num_train_samples=8)
    rows, report = build_sft_blend(data, seed=0)
    assert len(rows) == 8 and Counter(r.row["category"] for r in rows) == {"math": 4, "chat": 4}
    assert [s.dropped for s in report.sources] == [{"bad_row": 1}, {"bad_row": 1}]
    data.blend[1].template = "mcq"
    with pytest.raises(BlendError, match=r"data\.blend\[1\]\.template='mcq'"):
        build_sft_blend(data, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _grpo(*overrides: str):
    return build_recipe(
        "tiny_puzzle_grpo_cpu",
        [
            "data.dataset=post_training",
            "data.synthetic=null",
            "rewards=[{'name': 'math'}, {'name': 'mcq'}]",
            *overrides,
        ],
    )


def test_validation_names_the_field_and_index() -> None:
    config = _grpo(f"data.blend=[{{'path': '{SCIENCE}', 'template': 'mcq'}}, {{'path': '{MATH}'}}]")
    assert blend_errors(config) == []
    config.data.blend[1].weight = 0
    config.data.blend[0].template = "essay"
    config.data.blend[0].max_answer_words = 3
    config.data.blend[1].reward = "ifeval"
    config.data.blend[1].max_rows = 0
    config.data.path = MATH
    errors = blend_errors(config)
    assert "data.blend and data.path are both set: a blend lists its files itself; remove data.path" in errors
    assert "data.blend[1].weight=0 must be > 0 (leave the source out instead)" in errors
    assert "data.blend[0].template='essay' is unknown; valid: ['as_is', 'mcq', 'open_ended']" in errors
    assert "data.blend[0].max_answer_words applies to template='open_ended' only" in errors
    assert "data.blend[1].reward='ifeval' is not one of the recipe's rewards ['math', 'mcq']" in errors
    assert "data.blend[1].max_rows=0 must be >= 1 (or null: all rows)" in errors
    config.data.blend[1].weight = float("nan")
    assert "data.blend[1].weight=nan must be a finite number > 0" in blend_errors(config)


def test_validation_refuses_blend_outside_post_training_and_templates_for_sft() -> None:
    config = build_recipe("tiny_puzzle_grpo_cpu", [f"data.blend=[{{'path': '{MATH}'}}]"])
    assert "data.blend needs data.dataset='post_training' (got 'synthetic_addition')" in blend_errors(config)
    sft = build_recipe(
        "tiny_puzzle_sft_cpu",
        ["data.dataset=post_training", "data.synthetic=null", f"data.blend=[{{'path': '{MATH}', 'template': 'mcq'}}]"],
    )
    assert any(e.startswith("data.blend[0].template='mcq': SFT rows keep") for e in blend_errors(sft))
    sft.data.blend[0].template = "as_is"
    sft.data.blend[0].reward = "math"
    assert "data.blend[0].reward is an RL setting; task 'sft' scores no rewards" in blend_errors(sft)


def test_inputs_check_each_source_path_and_an_unset_path_is_not_asked_for(tmp_path) -> None:
    config = _grpo(f"data.blend=[{{'path': '{MATH}'}}, {{'path': '{tmp_path / 'missing.jsonl'}'}}]")
    errors = check_inputs(config)
    assert f"data.blend[1].path={tmp_path / 'missing.jsonl'} does not exist" in errors
    assert not any("data.path is not set" in e for e in errors)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n", encoding="utf-8")
    config.data.blend[1].path = str(bad)
    assert check_inputs(config) == [f"data.blend[1].path={bad}: no readable rows in the first 200"]


def test_every_blend_source_field_is_read_by_the_blend_builder(monkeypatch) -> None:
    """The ``BlendSource`` counterpart of ``test_every_field_reaches_the_run`` (no built-in recipe has a blend): each
    field is read by the code that builds the blend, not only by validation."""
    import dataclasses
    import sys

    names = {f.name for f in dataclasses.fields(BlendSource)}
    seen: set[str] = set()

    def getattribute(self, name):
        if name in names and not sys._getframe(1).f_code.co_filename.endswith(("validation.py", "dataclasses.py")):
            seen.add(name)
        return object.__getattribute__(self, name)

    monkeypatch.setattr(BlendSource, "__getattribute__", getattribute, raising=False)
    data = DataConfig(
        blend=[
            BlendSource(path=QA, template="open_ended", reward="math", domain="qa", max_rows=3, max_answer_words=4),
            BlendSource(path=MATH, weight=2.0),
        ]
    )
    build_prompt_blend(data, rewards=MATH_ONLY, seed=0)
    assert seen == names


def test_mmlu_pro_style_rows_take_both_templates() -> None:
    row = {"question": "2+2?", "choices": ["3", "4", "5"], "answer": "B", "answer_index": 1, "category": "math"}
    mcq = apply_template(row, "mcq")
    assert mcq["ground_truth"] == "B" and mcq["metadata"] == {"choices": ["3", "4", "5"]} and "choices" not in mcq
    assert apply_template(row, "open_ended")["ground_truth"] == "4"


def test_a_blend_row_routed_to_a_missing_reward_is_reported_as_the_blend(tmp_path) -> None:
    from nemotron_plugins.data.sources import DataSourceError
    from nemotron_plugins.rl.controller import load_prompt_rows

    pool = tmp_path / "routed.jsonl"
    rows = [
        {
            "id": f"r{i}",
            "messages": [{"role": "user", "content": f"{i}+1?"}],
            "ground_truth": str(i + 1),
            "reward": "nope",
        }
        for i in range(40)
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = _grpo(f"data.blend=[{{'path': '{pool}'}}]", f"output_dir={tmp_path / 'run'}", "evaluation.num_samples=0")
    with pytest.raises(DataSourceError, match=r"^data\.blend: row r\d+ asks for reward 'nope'"):
        load_prompt_rows(config)
