"""``math``: extraction, exact numeric matching, math-verify equivalence, safety pre-checks."""

from __future__ import annotations

import pytest

from nemotron_plugins.rewards.base import RewardSample, RewardStatus
from nemotron_plugins.rewards.math import (
    MathReward,
    extract_answer,
    is_expensive,
    parse_plain_number,
    precheck_latex,
)

REWARD = MathReward()


def score(completion: str, gt: object) -> float:
    [r] = REWARD.score([RewardSample(completion=completion, ground_truth=gt, metadata={"reasoning": "on"})])
    assert r.status is RewardStatus.OK, r
    return r.score


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>7*6</think>The answer is $\\boxed{42}$.", ("42", True)),
        ("<think>1000+234</think>1234", ("1234", False)),
        ("<think>..</think>\\boxed{\\frac{1}{2}} and later \\boxed{3}", ("3", True)),
        ("<think>\\boxed{1}</think>so the answer is 2.", ("2", False)),  # boxes inside the reasoning do not count
        ("Answer: $x = 5$", ("x = 5", False)),
        ("**Final answer:** 3/4", ("3/4", False)),
        ("We compute lots of things here and conclude that the value is 17 overall, as derived.", ("17", False)),
        ("<think>never closed 42", (None, False)),
        ("\\boxed{unclosed", (None, False)),
        ("\\boxed{\\frac{a}{b}", (None, False)),
        ("", (None, False)),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


def test_boxed_only_mode():
    assert extract_answer("<think></think>42", mode="boxed") == (None, False)
    assert MathReward(mode="boxed").score([RewardSample(completion="42", ground_truth="42")])[0].score == 0.0


@pytest.mark.parametrize(
    "text, value",
    [("1,234", 1234), ("-2.5", -2.5), ("3/4", 0.75), ("\\frac{3}{4}", 0.75), ("\\dfrac{1}{8}", 0.125), ("x = 5", 5)],
)
def test_plain_numbers_are_exact(text, value):
    assert parse_plain_number(text) == pytest.approx(value)


def test_plain_number_rejects_expressions():
    assert parse_plain_number("x^2") is None
    assert parse_plain_number("1/0") is None


@pytest.mark.parametrize(
    "completion, gt, expected",
    [
        ("<think>...</think>1234", "1234", 1.0),  # the tiny GRPO demo's plain answers
        ("<think>...</think>1234", 1234, 1.0),
        ("<think>...</think>1235", "1234", 0.0),
        ("<think></think>12340", "1234", 0.0),
        ("\\boxed{1,234}", "1234", 1.0),
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("\\boxed{0.333333}", "\\frac{1}{3}", 1.0),
        ("\\boxed{0.3}", "\\frac{1}{3}", 0.0),
        ("The answer is $\\frac{\\sqrt{2}}{2}$.", "\\frac{1}{\\sqrt{2}}", 1.0),
        ("\\boxed{x^2+2x+1}", "(x+1)^2", 1.0),
        ("\\boxed{x^2+2x+2}", "(x+1)^2", 0.0),
        ("\\boxed{\\{1,2\\}}", "\\{2,1\\}", 1.0),
        ("\\boxed{\\pi/2}", "\\frac{\\pi}{2}", 1.0),
        ("\\boxed{90^\\circ}", "90", 1.0),
        ("\\boxed{x = 3}", "3", 1.0),
        ("Answer: 3/4", "\\boxed{0.75}", 1.0),
    ],
)
def test_equivalence(completion, gt, expected):
    assert score(completion, gt) == expected


@pytest.mark.parametrize("gt", [None, "", "   ", True, float("nan"), [1, 2], "x" * 5000, "{" * 100 + "}" * 100])
def test_bad_ground_truth_is_invalid_input(gt):
    [r] = REWARD.score([RewardSample(completion="\\boxed{1}", ground_truth=gt)])
    assert r.status is RewardStatus.INVALID_INPUT
    assert "ground_truth" in r.message


def test_no_answer_scores_zero_ok_with_components():
    [r] = REWARD.score([RewardSample(completion="<think>thinking forever", ground_truth="1")])
    assert r.ok and r.score == 0.0 and r.components == {"extracted": 0.0, "boxed": 0.0}


@pytest.mark.parametrize(
    "answer, fragment",
    [
        ("__import__('os').system('true')", "forbidden"),
        ("lambda: 1", "forbidden"),
        ('"abc"', "forbidden"),
        ("a" * 2000, "characters"),
        ("(" * 60 + ")" * 60, "nests"),
        ("{", "unbalanced"),
        ("\\input{/etc/passwd}", "forbidden"),
    ],
)
def test_precheck_rejects_bait(answer, fragment):
    reason = precheck_latex(answer, max_chars=1000, max_depth=40)
    assert reason is not None and fragment in reason


def test_precheck_accepts_normal_latex():
    assert precheck_latex("\\frac{\\sqrt{2}}{2} + x^{2}", max_chars=1000, max_depth=40) is None


@pytest.mark.parametrize("expr", ["10^{10^{10}}", "9^9^9", "2^{1000000}", "100000!", "2^{3^{4}}"])
def test_expensive_answers_skip_symbolic_evaluation(expr):
    assert is_expensive(expr)
    [r] = REWARD.score([RewardSample(completion=f"\\boxed{{{expr}}}", ground_truth="1")])
    assert r.ok and r.score == 0.0


def test_expensive_answer_still_matches_identical_text():
    assert score("\\boxed{10^{10^{10}}}", "10^{10^{10}}") == 1.0


def test_completion_size_bound():
    [r] = MathReward(max_completion_chars=100).score([RewardSample(completion="1" * 101, ground_truth="1")])
    assert r.status is RewardStatus.INVALID_INPUT


def test_works_off_the_main_thread():
    """Trainers score from worker threads, where math-verify's signal-based timeout cannot be used."""
    from concurrent.futures import ThreadPoolExecutor

    batch = [RewardSample(completion="\\boxed{x^2+2x+1}", ground_truth="(x+1)^2")] * 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: MathReward().score([s])[0], batch))
    assert [(r.score, r.status) for r in results] == [(1.0, RewardStatus.OK)] * 2


# -- issue 15: bugs found by review and by Math-Verify's regression cases (each failed before the fix) -------------
@pytest.mark.parametrize(
    "completion, gt",
    [
        ("<think>..</think>\\boxed{\\frac{1}{2}}", "$\\frac{1}{2}$"),  # MATH-style gold in $...$
        ("<think>..</think>The total is \\boxed{18.90}.", "\\$18.90"),  # money gold
        ("<think>..</think>\\boxed{\\$16386.17}", "16386.17"),  # money inside the box
        ("<think>..</think>\\boxed{\\$16386.17}", "$16386.17$"),
        ("<think>..</think>$$\\boxed{667}$$", "$$667$$"),
        ("Final Answer: The largest $n$ is 34.", "$34$"),
    ],
)
def test_dollar_wrapped_and_money_answers(completion, gt):
    assert score(completion, gt) == 1.0


def test_dollar_gold_is_not_invalid_input():
    [r] = REWARD.score([RewardSample(completion="\\boxed{7}", ground_truth="$\\frac{1}{2}$")])
    assert r.status is RewardStatus.OK and r.score == 0.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>2+2</think><answer>4</answer>", "4"),
        ("<think>2+2</think>Answer: 4\nI hope this answers your question", "4"),
        ("<think>2+2</think>The answer is 4.\n\nI hope this answers your question.", "4"),
    ],
)
def test_answer_tags_and_answer_lines_have_word_boundaries(completion, expected):
    assert extract_answer(completion)[0] == expected
    assert score(completion, "4") == 1.0


@pytest.mark.parametrize(
    "completion, gt, expected",
    [
        ("is $\\boxed{32, 349}$", "32349", 0.0),  # a list, not a thousands separator
        ("\\boxed{32,349}", "32349", 1.0),
        ("\\boxed{1 000}", "1000", 1.0),
        ("\\boxed{1000,99}", "1000.99", 1.0),  # a decimal comma where unambiguous
        ("\\boxed{0,111}", "0.111", 1.0),
        ("\\boxed{1,000.99}", "1000.99", 1.0),
        ("\\boxed{4\\sqrt{2}}", "4", 0.0),
        ("\\boxed{20\\%}", "20", 1.0),  # percent
        ("\\boxed{[-4, 0]}", "$[-4,0]$", 1.0),  # intervals
        ("\\boxed{(0, 9)}", "$[0,9)$", 0.0),
        ("\\boxed{\\{3, 1, 2\\}}", "$\\{1,2,3\\}$", 1.0),  # sets
        ("\\boxed{\\begin{pmatrix}1 & 2\\\\ 3 & 4\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 1.0),
        ("\\boxed{\\begin{pmatrix}1 & 2\\\\ 3 & 5\\end{pmatrix}}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", 0.0),
        ("\\boxed{1}, \\boxed{2}", "$1$ and $2$", 1.0),  # several boxes against a gold with several math spans
    ],
)
def test_separators_lists_units_intervals_sets_matrices(completion, gt, expected):
    assert score(completion, gt) == expected


@pytest.mark.parametrize("expr", ["10^{9999*9999}", "\\binom{99999999}{49999999}", "10^{999 \\times 9999}"])
def test_huge_products_in_exponents_and_binomials_are_expensive(expr):
    assert is_expensive(expr)


def test_math_verify_timeout_in_process_is_a_timeout_not_a_zero():
    # In a main thread math-verify's own alarm stops the expansion; math-verify then answers "not equal". Before, that
    # was an OK 0.0 (a wrong answer); it is a timeout, which the adapters turn into "no reward".
    reward = MathReward(timeout_s=1.0)
    [r] = reward.score([RewardSample(completion="\\boxed{(x+1)^{9999}}", ground_truth="x^{9999}")])
    assert r.status is RewardStatus.TIMEOUT and "math-verify's own timeout" in r.message, r
    # A timeout in one check does not hide a match found by another, and the next sample starts clean.
    [r] = reward.score([RewardSample(completion="\\boxed{(x+1)^2}", ground_truth="x^2+2x+1")])
    assert r.ok and r.score == 1.0, r
