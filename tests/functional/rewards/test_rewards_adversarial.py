"""The adversarial suite: every hostile sample gets a finite score and a status, and no model text runs as code."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nemotron_plugins.rewards.adversarial import adversarial_cases, code_bait
from nemotron_plugins.rewards.base import RewardStatus, build_reward

pytestmark = pytest.mark.timeout(300)

GROUND_TRUTHS = {
    "math": None,  # keep each case's own answer
    "mcq": "A",
    "think_format": None,
    "tool_call": [{"name": "f", "arguments": {}}],
    "ifeval": {
        "instruction_id_list": ["punctuation:no_comma", "keywords:existence", "detectable_format:json_format"],
        "kwargs": [{}, {"keywords": ["import"]}, {}],
    },
}


def test_the_bait_is_live(tmp_path):
    """Control: sympy's parse_expr (an eval) really does run the bait, so its absence below means something."""
    from sympy.parsing.sympy_parser import parse_expr

    marker = tmp_path / "control"
    parse_expr(code_bait(marker)[0], evaluate=False)
    assert marker.exists()


@pytest.mark.parametrize("name", sorted(GROUND_TRUTHS))
def test_in_process_rewards_survive_the_suite(name, tmp_path, monkeypatch):
    import latex2sympy2_extended.latex2sympy2 as l2s
    import math_verify.parser as mv_parser

    def forbidden(*args, **kwargs):
        raise AssertionError(f"parse_expr called on {str(args)[:80]}")

    monkeypatch.setattr(mv_parser, "parse_expr", forbidden)
    monkeypatch.setattr(l2s, "parse_expr", forbidden)

    marker = tmp_path / "pwned"
    cases = adversarial_cases(marker, include_slow=False)
    gt = GROUND_TRUTHS[name]
    samples = [c.sample if gt is None else dataclasses.replace(c.sample, ground_truth=gt) for c in cases]
    results = build_reward(name).score(samples)
    assert len(results) == len(cases)
    for case, result in zip(cases, results, strict=True):
        assert math.isfinite(result.score), case.name
        if result.status is RewardStatus.INVALID_INPUT:  # only the size bound may refuse a sample
            assert "max_completion_chars" in result.message, (case.name, result)
        else:
            assert result.status is RewardStatus.OK, (case.name, result)
    assert results[[c.name for c in cases].index("huge_completion_10mb")].status is RewardStatus.INVALID_INPUT
    assert not marker.exists()
    assert not list(tmp_path.iterdir())


def test_math_rejects_code_with_score_zero(tmp_path):
    marker = tmp_path / "pwned"
    cases = [
        c
        for c in adversarial_cases(marker, include_slow=False)
        if "_code_" in c.name or c.name.startswith("sympify_bait_")
    ]
    assert len(cases) == 5 * len(code_bait(marker))
    results = build_reward("math").score([c.sample for c in cases])
    assert all(r.ok and r.score == 0.0 for r in results)
    assert not marker.exists()


def test_pooled_math_bounds_every_case_including_slow_ones(tmp_path):
    marker = tmp_path / "pwned"
    cases = adversarial_cases(marker)
    assert any(c.slow for c in cases)
    spec = {"pool": {"reward": "math", "timeout_s": 600}, "workers": 2, "timeout_s": 3}
    with build_reward(spec) as reward:
        results = reward.score([c.sample for c in cases])
    for case, result in zip(cases, results, strict=True):
        assert math.isfinite(result.score), case.name
        if case.slow:
            assert result.status is RewardStatus.TIMEOUT, (case.name, result)
        else:
            assert result.status in (RewardStatus.OK, RewardStatus.INVALID_INPUT), (case.name, result)
    named = {c.name: r for c, r in zip(cases, results, strict=True)}
    assert named["big_completion_in_bound"].score == 1.0  # legit answers after hostile-looking text still count
    assert named["unclosed_braces"].score == 0.0
    assert named["huge_completion_10mb"].status is RewardStatus.INVALID_INPUT
    assert not marker.exists()
