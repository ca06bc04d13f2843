"""Pass-rate estimation with a deterministic fake generator and a real Reward subclass; resume after a crash."""

from __future__ import annotations

import json

import pytest

from nemotron_plugins.curriculum.pass_rate import (
    CompletionGenerator,
    GenerationError,
    PassRateConfig,
    estimate_pass_rates,
)
from nemotron_plugins.curriculum.records import CurriculumInputError
from nemotron_plugins.rewards.base import RewardResult, RewardSample, SampleReward


class ExactAnswer(SampleReward):
    """1.0 when the completion equals the ground truth; invalid input when the ground truth is missing."""

    name = "exact_answer"

    def score_sample(self, sample: RewardSample) -> RewardResult:
        if sample.ground_truth is None:
            return RewardResult.invalid("no ground truth")
        return RewardResult(score=float(sample.completion.strip() == str(sample.ground_truth)))


class FakeGenerator:
    """Prompt ``"q<i>"`` with answer ``a``: completion j is right for j < solved[i] (deterministic)."""

    def __init__(self, solved: dict[str, int], fail_after_calls: int | None = None) -> None:
        self.solved = solved
        self.calls = 0
        self.prompts_seen: list[str] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts, n):
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated crash")
        self.calls += 1
        self.prompts_seen.extend(prompts)
        return [["right" if j < self.solved[p] else "wrong" for j in range(n)] for p in prompts]


def _dataset(tmp_path, n=10):
    solved = {f"q{i}": i % 9 for i in range(n)}
    path = tmp_path / "prompts.jsonl"
    with path.open("w") as handle:
        for i in range(n):
            handle.write(json.dumps({"id": f"id{i}", "prompt": f"q{i}", "ground_truth": "right", "reasoning": "on"}))
            handle.write("\n")
    return path, solved


def test_fake_generator_satisfies_the_protocol():
    assert isinstance(FakeGenerator({}), CompletionGenerator)


def test_estimates_pass_rates_and_counts(tmp_path):
    path, solved = _dataset(tmp_path)
    out = tmp_path / "rated.jsonl"
    config = PassRateConfig(num_samples=8, chunk_size=3, show_progress=False)
    summary = estimate_pass_rates(path, out, FakeGenerator(solved), ExactAnswer(), config)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"id{i}" for i in range(10)]
    for i, row in enumerate(rows):
        expected = min(i % 9, 8)
        assert row["num_passed"] == expected and row["num_samples"] == 8
        assert row["pass_rate"] == expected / 8
        assert row["num_reward_errors"] == 0
        assert row["reasoning"] == "on" and row["prompt"] == f"q{i}"  # the dataset is written back whole
    assert (summary.total, summary.resumed, summary.estimated) == (10, 0, 10)
    assert summary.mean_pass_rate == pytest.approx(sum(r["pass_rate"] for r in rows) / 10)


def test_threshold_and_reward_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": 1, "prompt": "q0"}) + "\n")  # no ground truth: the reward says invalid
    out = tmp_path / "o.jsonl"
    summary = estimate_pass_rates(
        path, out, FakeGenerator({"q0": 4}), ExactAnswer(), PassRateConfig(num_samples=4, show_progress=False)
    )
    row = json.loads(out.read_text())
    assert (row["pass_rate"], row["num_reward_errors"]) == (0.0, 4)
    assert summary.reward_errors == 4


def test_resumes_without_redoing_finished_prompts(tmp_path):
    path, solved = _dataset(tmp_path, n=10)
    out = tmp_path / "rated.jsonl"
    config = PassRateConfig(num_samples=4, chunk_size=3, show_progress=False)
    crashing = FakeGenerator(solved, fail_after_calls=2)  # two chunks (6 prompts) done, then a crash
    with pytest.raises(KeyboardInterrupt):
        estimate_pass_rates(path, out, crashing, ExactAnswer(), config)
    assert len(out.read_text().splitlines()) == 6
    # A torn last line (crash mid-write) is cut off and redone.
    with out.open("a") as handle:
        handle.write('{"id": "id6", "pass_ra')
    second = FakeGenerator(solved)
    summary = estimate_pass_rates(path, out, second, ExactAnswer(), config)
    assert second.prompts_seen == [f"q{i}" for i in range(6, 10)]
    assert (summary.resumed, summary.estimated) == (6, 4)
    uninterrupted = tmp_path / "once.jsonl"
    estimate_pass_rates(path, uninterrupted, FakeGenerator(solved), ExactAnswer(), config)
    assert out.read_text() == uninterrupted.read_text()
    # Nothing left to do: no generation at all.
    third = FakeGenerator(solved)
    assert estimate_pass_rates(path, out, third, ExactAnswer(), config).estimated == 0 and third.calls == 0


def test_missing_ids_use_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"q{i}", "ground_truth": "right"}) for i in range(3)) + "\n")
    out = tmp_path / "o.jsonl"
    estimate_pass_rates(path, out, FakeGenerator({f"q{i}": i for i in range(3)}), ExactAnswer(),
                        PassRateConfig(num_samples=2, show_progress=False))  # fmt: skip
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"id": 1}, "line 2: field 'prompt' must be a non-empty string or a list of chat messages"),
        ({"id": 1, "prompt": [{"role": "user"}]}, "line 2: field 'prompt' is a list but not"),
        ({"id": 0, "prompt": "x"}, "line 2: duplicate id 0"),
    ],
)
def test_bad_prompt_lines_are_named(tmp_path, line, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": 0, "prompt": "q0"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(CurriculumInputError) as info:
        estimate_pass_rates(path, tmp_path / "o.jsonl", FakeGenerator({}), ExactAnswer(), PassRateConfig())
    assert message in str(info.value)


def test_generator_contract_is_checked(tmp_path):
    path, _ = _dataset(tmp_path, n=2)

    class Short:
        def generate(self, prompts, n):
            return [["x"] * (n - 1) for _ in prompts]

    with pytest.raises(GenerationError, match="must return 4 strings for prompt id 'id0'"):
        estimate_pass_rates(path, tmp_path / "o.jsonl", Short(), ExactAnswer(),
                            PassRateConfig(num_samples=4, show_progress=False))  # fmt: skip


def test_output_of_another_dataset_is_refused(tmp_path):
    path, solved = _dataset(tmp_path, n=2)
    out = tmp_path / "o.jsonl"
    out.write_text(json.dumps({"id": "elsewhere", "pass_rate": 0.5}) + "\n")
    with pytest.raises(CurriculumInputError, match="id\\(s\\) not in"):
        estimate_pass_rates(path, out, FakeGenerator(solved), ExactAnswer(), PassRateConfig(show_progress=False))
